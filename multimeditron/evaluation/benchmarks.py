"""The evaluation tasks (GMAI-MMBench, SLAKE, PathVQA, the synthetic VQA set): where the data lives, how a row
becomes a prompt and how a reply is scored. Shared by the lmms-eval task files and the built-in evaluator, so both
ask the same questions and compute the same numbers."""
from __future__ import annotations

import dataclasses
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from datasets import Dataset

from multimeditron.errors import UsageError
from multimeditron.evaluation.data import decode_image, load_table, slake_image
from multimeditron.evaluation.scoring import (
    choice_correct,
    exact_match,
    extract_choice,
    is_closed,
    percent,
    vqa_summary,
)
from multimeditron.model.configuration import DEFAULT_ATTACHMENT_TOKEN

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDE"


@dataclass(frozen=True)
class Benchmark:
    """One task: its data source, prompt, generation budget, scoring and summary (subclasses fill in the rest)."""

    name: str
    title: str
    hub_path: str | None
    split: str | None  # None: the first of test / validation / val / train
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n\n",)  # lmms-eval's default `until`; the task YAMLs repeat it
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    # The column naming each row's imaging modality, for the router usage per modality (rows without it: none).
    modality_column: str = "modality"
    # What joins the image placeholders and the question in the user turn.
    prompt_join: ClassVar[str] = "\n"

    @property
    def env_var(self) -> str:
        """Environment variable naming a local copy (parquet file or folder, Arrow `save_to_disk` folder)."""
        return f"MMD_{self.name.upper().removeprefix('MMD_')}_DATA"

    def check_source(self, data: str | os.PathLike | None = None) -> None:
        """Refuses a task whose rows have nowhere to come from (no `data`, no $<env_var>, no hub copy)."""
        if not (data or os.environ.get(self.env_var)) and self.hub_path is None:
            raise UsageError(f"--task {self.name} has no hub copy: pass --data PATH or set {self.env_var}")

    def check_rows(self, rows: Dataset) -> None:
        """Refuses rows this task (as configured for the run) cannot score; the message names the option."""

    def load(self, data: str | os.PathLike | None = None) -> Dataset:
        """The evaluation rows: from `data`, else from $<env_var>, else from the hub."""
        self.check_source(data)
        source = data or os.environ.get(self.env_var)
        if source:
            return self.prepare(load_table(source, self.split))
        try:
            table = load_table(self.hub_path, self.split)
        except Exception as error:  # offline, gated, renamed: say how to use a local copy instead
            raise RuntimeError(f"{self.name}: could not load {self.hub_path} from the hub ({error}); point at a "
                               f"local copy with --data PATH or ${self.env_var}") from error
        return self.prepare(table)

    def source(self, data: str | os.PathLike | None = None) -> str | None:
        """Where the rows come from: `data`, else $<env_var>, else the hub id."""
        return str(data) if data else os.environ.get(self.env_var) or self.hub_path

    def image_dir(self, data: str | os.PathLike | None = None) -> str | None:
        """The folder relative image paths of a local copy resolve against (its folder, as in training)."""
        source = data or os.environ.get(self.env_var)
        if not source:
            return None
        path = Path(source).expanduser().resolve()
        return str(path if path.is_dir() else path.parent)

    def prepare(self, table: Dataset) -> Dataset:
        return table

    def question(self, doc: dict[str, Any]) -> str:
        raise NotImplementedError

    def modality(self, doc: dict[str, Any]) -> str | None:
        """The row's imaging modality (its `modality_column`), None when it has none."""
        value = doc.get(self.modality_column)
        return None if value is None else str(value)

    def images(self, doc: dict[str, Any], image_dir: str | None = None) -> list:
        return [decode_image(doc["image"], image_dir)]

    def messages(self, doc: dict[str, Any], image_dir: str | None = None) -> list[dict[str, Any]]:
        """lmms-eval chat messages: the images, then the question."""
        parts = [{"type": "image", "url": image} for image in self.images(doc, image_dir)]
        return [{"role": "user", "content": parts + [{"type": "text", "text": self.question(doc)}]}]

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        raise NotImplementedError

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"accuracy": percent(r["correct"] for r in records), "n": len(records)}


class ChoiceBenchmark(Benchmark):
    """Multiple choice over the columns A-E (missing options are empty); `answer` holds the letter."""

    def options(self, doc: dict[str, Any]) -> dict[str, str]:
        return {letter: str(doc[letter]).strip() for letter in LETTERS
                if doc.get(letter) is not None and str(doc[letter]).strip() not in ("", "nan", "None")}

    def question(self, doc: dict[str, Any]) -> str:
        listed = "\n".join(f"{letter}. {text}" for letter, text in self.options(doc).items())
        return f"{str(doc['question']).strip()}\n{listed}\n{LETTER_ANSWER}"

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        options = self.options(doc)
        return {"correct": choice_correct(reply, options, doc["answer"]), "picked": extract_choice(reply, options)}


class VQABenchmark(Benchmark):
    """Short-answer VQA: normalised exact match, reported overall, on yes/no (closed) and on open questions."""
    metrics: ClassVar[tuple[str, ...]] = ("accuracy", "closed_accuracy", "open_accuracy")

    def question(self, doc: dict[str, Any]) -> str:
        return f"{str(doc['question']).strip()}\n{SHORT_ANSWER}"

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        return {"correct": exact_match(reply, doc["answer"]), "closed": is_closed(doc["answer"])}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return vqa_summary(records)


class SlakeBenchmark(VQABenchmark):
    """SLAKE: English rows only (`q_lang == "en"`); the image is the row's `image` if any, else `img_name` read from
    $MMD_SLAKE_IMAGES (a folder or imgs.zip) or from the hub's imgs.zip."""

    def prepare(self, table: Dataset) -> Dataset:
        if "q_lang" in table.column_names:
            table = table.filter(lambda lang: str(lang).strip().lower() == "en", input_columns="q_lang")
        return table

    def images(self, doc: dict[str, Any], image_dir: str | None = None) -> list:
        if doc.get("image") is not None:
            return [decode_image(doc["image"], image_dir)]
        return [slake_image(doc["img_name"], self.hub_path)]


@dataclass(frozen=True)
class ConversationBenchmark(Benchmark):
    """MultiMediset rows (`modalities` + `conversations`): the turns before the last assistant turn are the prompt
    (each `attachment_token` in them is the next image), the last assistant turn is the reference answer."""

    attachment_token: str = DEFAULT_ATTACHMENT_TOKEN

    def images(self, doc: dict[str, Any], image_dir: str | None = None) -> list:
        return [decode_image(m["value"], image_dir) for m in doc["modalities"] or () if m["type"] == "image"]

    def context_and_reference(self, doc: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        turns = list(doc.get("conversations") or ())
        last = max((i for i, turn in enumerate(turns) if turn["role"] == "assistant"), default=None)
        if last is None or not any(turn["role"] == "user" for turn in turns[:last]):
            raise ValueError(f"{self.name}: a row without a user turn followed by an assistant turn has nothing to "
                             f"score: {turns!r:.120}")
        return turns[:last], str(turns[last]["content"])

    def reference(self, doc: dict[str, Any]) -> str:
        return self.context_and_reference(doc)[1]

    def question(self, doc: dict[str, Any]) -> str:
        """The last user turn before the reference, placeholders removed (lmms-eval's `doc_to_text`)."""
        turns, _ = self.context_and_reference(doc)
        last = next(turn for turn in reversed(turns) if turn["role"] == "user")
        return last["content"].replace(self.attachment_token, "").strip()

    def messages(self, doc: dict[str, Any], image_dir: str | None = None) -> list[dict[str, Any]]:
        images = self.images(doc, image_dir)
        turns, _ = self.context_and_reference(doc)
        wanted = sum(turn["content"].count(self.attachment_token) for turn in turns)
        if wanted != len(images):
            raise ValueError(f"{self.name}: the prompt holds {wanted} {self.attachment_token} placeholder(s) but the "
                             f"row has {len(images)} image(s) (set the data's attachment token if it differs)")
        remaining = iter(images)
        messages = []
        for turn in turns:
            pieces = turn["content"].split(self.attachment_token)
            parts: list[dict[str, Any]] = []
            for index, piece in enumerate(pieces):
                if index:
                    parts.append({"type": "image", "url": next(remaining)})
                if piece.strip():
                    parts.append({"type": "text", "text": piece.strip()})
            messages.append({"role": turn["role"], "content": parts})
        return messages


@dataclass(frozen=True)
class MultiMedisetBenchmark(ConversationBenchmark, VQABenchmark):
    """Any MultiMediset dataset: the model's answer against the last assistant turn by normalised exact match;
    closed (yes/no reference) vs open, and the same per question type when `question_type_column` names one."""

    question_type_column: str | None = None

    def check_rows(self, rows: Dataset) -> None:
        if self.question_type_column and self.question_type_column not in rows.column_names:
            raise UsageError(f"--question-type-column {self.question_type_column}: {self.name} has no such column; "
                             f"its columns: {sorted(rows.column_names)}")

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        record = super().score({"answer": self.reference(doc)}, reply)
        if self.question_type_column:
            if self.question_type_column not in doc:  # `check_rows` refuses this before any answer is generated
                raise KeyError(f"{self.name}: no column {self.question_type_column!r} (--question-type-column); "
                               f"columns: {sorted(doc)}")
            record["question_type"] = str(doc[self.question_type_column])
        return record

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        summary = vqa_summary(records)
        if self.question_type_column:
            kinds = sorted({r["question_type"] for r in records})
            summary["per_type"] = {kind: vqa_summary([r for r in records if r["question_type"] == kind])
                                   for kind in kinds}
        return summary


class SyntheticBenchmark(ConversationBenchmark):
    """The package's synthetic VQA set (multimeditron.data.synthetic): MultiMediset rows plus `question_type`,
    `answer` and `choices`; accuracy per question type beside its chance level."""

    def score(self, doc: dict[str, Any], reply: str) -> dict[str, Any]:
        choices = list(doc.get("choices") or [])
        correct = exact_match(reply, doc["answer"])
        if not correct and choices:
            options = dict(zip(string.ascii_uppercase, choices))
            correct = choice_correct(reply, options, _letter_of(doc["answer"], options))
        return {"correct": correct, "question_type": str(doc.get("question_type") or "all"),
                "n_choices": len(choices)}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        levels = _chance_levels()
        per_type: dict[str, dict[str, Any]] = {}
        for kind in sorted({r["question_type"] for r in records}):
            rows = [r for r in records if r["question_type"] == kind]
            chance = levels.get(kind)
            if chance is None and rows and rows[0]["n_choices"]:
                chance = 1.0 / rows[0]["n_choices"]
            per_type[kind] = {"accuracy": percent(r["correct"] for r in rows), "n": len(rows),
                              "chance": None if chance is None else 100.0 * chance if chance <= 1 else chance}
        known = [(t["chance"], t["n"]) for t in per_type.values() if t["chance"] is not None]
        overall_chance = sum(c * n for c, n in known) / sum(n for _, n in known) if known else None
        return {"accuracy": percent(r["correct"] for r in records), "chance": overall_chance, "n": len(records),
                "per_type": per_type}


def _letter_of(answer: Any, options: dict[str, str]) -> str:
    for letter, text in options.items():
        if exact_match(text, answer):
            return letter
    return str(answer)


def _chance_levels() -> dict[str, float]:
    """CHANCE_LEVELS from the synthetic-set module (fractions or percent), {} if that module is absent."""
    try:
        from multimeditron.data.synthetic import CHANCE_LEVELS
    except ImportError:
        return {}
    return dict(CHANCE_LEVELS)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    ChoiceBenchmark("mmd_gmai_mmbench", "GMAI-MMBench (val)", "louis-mart/GMAI-MMBench-val", None, max_new_tokens=16),
    SlakeBenchmark("mmd_slake", "SLAKE (test, English)", "BoKelvin/SLAKE", "test"),
    VQABenchmark("mmd_pathvqa", "PathVQA (test)", "flaviagiammarino/path-vqa", "test"),
    SyntheticBenchmark("synthetic_vqa", "Synthetic medical VQA (test)", None, "test", max_new_tokens=16,
                       stop=("\n",)),
    MultiMedisetBenchmark("multimediset", "Your own MultiMediset data (last assistant turn)", None, "test"),
)}


def get_benchmark(name: str, split: str | None = None, question_type_column: str | None = None,
                  attachment_token: str | None = None, modality_column: str | None = None) -> Benchmark:
    """A task by name; `split`, `question_type_column`, `attachment_token` and `modality_column` adjust it for this
    run (the second and third only for tasks that read MultiMediset rows)."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    changes: dict[str, Any] = {"split": split} if split else {}
    if modality_column:
        changes["modality_column"] = modality_column
    if attachment_token:
        if not isinstance(bench, ConversationBenchmark):
            raise ValueError(f"{name} does not read MultiMediset rows: --attachment-token does not apply")
        changes["attachment_token"] = attachment_token
    if question_type_column:
        if not isinstance(bench, MultiMedisetBenchmark):
            raise ValueError(f"--question-type-column applies to the multimediset task, not {name}")
        changes["question_type_column"] = question_type_column
    return dataclasses.replace(bench, **changes) if changes else bench
