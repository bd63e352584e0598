"""The output folder of every expert command (`probe`, `finetune`, `adapt`, `segment`), one rule for all: a run
starts in a fresh `--out`, never mixing its files with an earlier run's. An `--out` that holds an earlier run is
refused unless `--overwrite` (its files are removed first; an embedding cache is kept) or `--resume` (a training run
continues only with the recipe and the data it started with, and says so).

`run.json` records what a run was started with (command, recipe, data fingerprints): it marks the folder as a run
folder (only such folders are emptied by `--overwrite`) and is what `--resume` compares against.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from multimeditron.errors import UsageError

RECORD = "run.json"
# Keys that may change when a run resumes: where and how fast it runs, not what it computes.
RESUME_FREE = ("threads", "training_args.resume_from_checkpoint", "training_args.dataloader_num_workers",
               "training_args.report_to", "training_args.disable_tqdm", "training_args.use_cpu",
               "training_args.bf16", "training_args.fp16", "training_args.tf32", "training_args.output_dir",
               "training_args.per_device_eval_batch_size", "training_args.logging_dir", "training_args.run_name",
               "data.on_bad_image")
LISTED = 4


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def recipe_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every recipe key that differs (keys of `RESUME_FREE` left out)."""
    old, new = _flatten(json.loads(json.dumps(before, default=str))), _flatten(json.loads(json.dumps(now, default=str)))
    return [f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and not key.startswith(RESUME_FREE)]


def _entries(out: Path, keep: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name not in keep and p.name != RECORD) if out.is_dir() else []


@contextmanager
def run_folder(out: str | Path, command: str, recipe: dict[str, Any], data: dict[str, Any], *,
               resume: bool | str | None = False, overwrite: bool = False, keep: tuple[str, ...] = (),
               main_process: bool = True, say: Callable[[str], None] = print) -> Iterator[Path]:
    """Around a run: check `out` against the rule above (errors name the flag that fixes them), empty it under
    `overwrite`, write `run.json` (main process); a run that fails before writing anything else leaves no folder
    behind. A folder holding nothing but `run.json` counts as fresh. `data`: fingerprints of the inputs
    (`{split: digest}`); `resume`: True (the last checkpoint in `out`) or a checkpoint folder."""
    out = Path(out)
    created = not out.exists()
    prepare_run_folder(out, command, recipe, data, resume=resume, overwrite=overwrite, keep=keep,
                       main_process=main_process, say=say)
    try:
        yield out
    except BaseException:
        if main_process and not resume and not _entries(out, keep):
            (out / RECORD).unlink(missing_ok=True)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    if main_process and (out / RECORD).is_file():  # a finished run is not resumed (its last checkpoint may be gone)
        record = json.loads((out / RECORD).read_text())
        (out / RECORD).write_text(json.dumps({**record, "finished": True}, indent=2, default=str) + "\n")


def check_run_folder(out: str | Path, command: str, recipe: dict[str, Any], data: dict[str, Any], *,
                     resume: bool | str | None = False, overwrite: bool = False, keep: tuple[str, ...] = (),
                     say: Callable[[str], None] = print) -> list[Path]:
    """`run_folder`'s checks, nothing written (a command running several recipes checks every folder before the
    first trains); returns the earlier run's entries that `overwrite` removes."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    earlier = _entries(out, keep)
    if resume:
        _check_resume(out, command, recipe, data, resume, say)
        return []
    if earlier:
        listed = ", ".join(p.name for p in earlier[:LISTED]) + (", ..." if len(earlier) > LISTED else "")
        if not overwrite:
            raise UsageError(f"--out {out} holds an earlier run ({listed}); pass --overwrite to replace it"
                             + (", --resume to continue it," if command != "probe" else "")
                             + " or choose another --out")
        if not (out / RECORD).is_file() and not any((out / n).exists() for n in ("results.json", "segmentation.json",
                                                                                "history.json")):
            raise UsageError(f"--overwrite: {out} holds files ({listed}) but no {RECORD}: not a run folder of "
                             f"multimeditron, so nothing is removed; choose another --out")
    return earlier


def check_fresh_out(out: str | Path | None, command: str, *, overwrite: bool = False,
                    resume: bool | str | None = False, dry_run: bool = False) -> None:
    """The fresh-`--out` rule alone, needing neither data nor expert, so a command calls it before loading either:
    an earlier run in `out` is refused unless `--overwrite`. A resumed run is checked later against the recipe and
    data it started with (`run_folder`); a dry run writes nothing and is not refused."""
    if out is None or resume or dry_run:
        return
    check_run_folder(out, command, {}, {}, overwrite=overwrite)


def prepare_run_folder(out: str | Path, command: str, recipe: dict[str, Any], data: dict[str, Any], *,
                       resume: bool | str | None = False, overwrite: bool = False, keep: tuple[str, ...] = (),
                       main_process: bool = True, say: Callable[[str], None] = print) -> None:
    """`run_folder`'s checks and record, without the clean-up of a failed run."""
    out = Path(out)
    earlier = check_run_folder(out, command, recipe, data, resume=resume, overwrite=overwrite, keep=keep, say=say)
    if earlier and main_process:
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        say(f"[{command}] --overwrite: removed the earlier run's {len(earlier)} entries from {out}"
            + (f" (kept {', '.join(keep)})" if any((out / k).exists() for k in keep) else ""))
    if main_process and not resume:
        out.mkdir(parents=True, exist_ok=True)
        (out / RECORD).write_text(json.dumps({"command": command, "recipe": recipe, "data": data}, indent=2,
                                             default=str) + "\n")


def _check_resume(out: Path, command: str, recipe: dict[str, Any], data: dict[str, Any], resume: bool | str,
                  say: Callable[[str], None]) -> None:
    from transformers.trainer_utils import get_last_checkpoint

    if isinstance(resume, str):
        last = resume if Path(resume).is_dir() else None
        if last is None:
            raise UsageError(f"training_args.resume_from_checkpoint: {resume} is not a checkpoint folder")
    else:
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last is None:
        raise UsageError(f"--resume: {out} holds no checkpoint-* folder to continue from")
    record_path = out / RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("command") != command:
            raise UsageError(f"--resume: {out} holds a `{record.get('command')}` run, not a `{command}` run")
        if record.get("finished"):
            raise UsageError(f"--resume: the run in {out} has finished; nothing to continue (train longer in a new "
                             f"run: another --out, or --overwrite" + ("; score it again: finetune --eval --checkpoint "
                                                                       f"{out}" if command == "finetune" else "")
                             + ")")
        changed = recipe_changes(record.get("recipe", {}), recipe)
        changed += [f"data ({split}): the images differ from the run's" for split in sorted(set(data) | set(
            record.get("data", {}))) if record.get("data", {}).get(split) != data.get(split)]
        if changed:
            raise UsageError(f"--resume: this run differs from the one in {out}: " + "; ".join(changed[:8])
                             + ("; ..." if len(changed) > 8 else "") + ". Resume with what it started with, or start "
                             "a new run (another --out, or --overwrite)")
    else:
        say(f"[{command}] note: {out} has no {RECORD} (written by an earlier version): the recipe and data cannot be "
            f"compared with the run's")
    state_file = Path(last) / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    epochs = recipe.get("training_args", {}).get("num_train_epochs")
    done = f"after epoch {state['epoch']:g}" + (f" of {float(epochs):g}" if epochs is not None else "") \
        if isinstance(state.get("epoch"), (int, float)) else ""
    say(f"[{command}] resuming from {last}" + (f" ({done}, step {state.get('global_step', '?')})" if done else ""))


__all__ = ["RECORD", "check_fresh_out", "check_run_folder", "prepare_run_folder", "recipe_changes", "run_folder"]
