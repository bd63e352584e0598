"""The `published` scoring mode gives the published evaluation fork's verdicts (hand-derived from its rules) on
tricky replies, beside ours; its prompts, budgets and derived open column; its task files and `eval --scoring`."""
from __future__ import annotations

import json

import pytest
import yaml

from multimeditron.cli import main as cli_main
from multimeditron.evaluation import TASKS_DIR
from multimeditron.evaluation.benchmarks import get_benchmark
from multimeditron.evaluation.published_scoring import (
    GMAI_POST_PROMPT,
    VQA_POST_PROMPT,
    derived_open,
    extract_final_answer,
    gmai_letter,
    gmai_prompt,
    normalize_vqa,
)
from multimeditron.evaluation.published_tasks import published_table, published_vqa_summary, with_scoring

# (reply, reference, the fork's verdict, ours): where the two differ, the reason is in the comment.
VQA_CASES = [
    ("Yes", "yes", True, True),
    ("Yes.", "yes", True, True),
    ("Yes, there is a mass", "yes", False, True),     # the fork wants the whole reply to be the answer
    ("1", "yes", True, False),                       # the fork maps a lone "1"/"0" to yes/no
    ("Y", "yes", True, False),                       # ... and "y"/"n"
    ("No", "yes", False, False),
    ("Two", "2", True, True),
    ("eleven", "11", False, True),                   # the fork's number words stop at ten
    ("The liver.", "liver", True, True),
    ("x-ray", "x ray", False, True),                 # the fork keeps "-"
    ("Answer: lung", "lung", True, False),            # the fork reads what follows "Answer:"
    ("Reasoning first.\nLeft lung", "left lung", True, False),  # ... else the last line
    ("", "yes", False, False),
    (None, "no", False, False),
]


@pytest.mark.parametrize("reply,answer,fork,ours", VQA_CASES)
def test_vqa_verdicts_on_tricky_replies(reply, answer, fork, ours):
    bench = with_scoring(get_benchmark("mmd_pathvqa"), "published")
    record = bench.score({"question": "q", "answer": answer}, reply)
    assert (record["correct"], record["ours_correct"]) == (fork, ours)


GMAI_OPTIONS = {"question": "Which organ?", "A": "Lung", "B": "Liver", "C": "Kidney", "D": "Brain", "E": None}
# (reply, reference letter, the letter the fork reads, its verdict, ours)
GMAI_CASES = [
    ("A", "A", "a", True, True),
    ("There is a mass in the liver.", "B", "a", False, True),   # the fork reads the article "a" as option A
    ("There is a mass in the liver.", "A", "a", True, False),
    ("because.", "B", "b", True, False),                          # no letter: the fork takes the first character
    ("Answer: C", "C", "c", True, True),
    ("The lesion is bright.\nAnswer: D", "D", "d", True, True),
    ("The answer is (D).", "D", "d", True, True),
    ("E.", "E.", "e", True, False),                               # E is not an option of this item: ours refuses it
    ("", "A", "other", False, False),
    ("Kidney", "C", "other", False, True),                        # ours also matches an option's text
]


@pytest.mark.parametrize("reply,answer,letter,fork,ours", GMAI_CASES)
def test_gmai_verdicts_on_tricky_replies(reply, answer, letter, fork, ours):
    bench = with_scoring(get_benchmark("mmd_gmai_mmbench"), "published")
    record = bench.score({**GMAI_OPTIONS, "answer": answer}, reply)
    assert (record["picked"], record["correct"], record["ours_correct"]) == (letter, fork, ours)


def test_normalisation_and_extraction_rules():
    assert normalize_vqa("  The Two lesions, 5% / left-side. ") == "2 lesions 5% / left-side"
    assert normalize_vqa("Yes, there is") == "yes there is"
    assert extract_final_answer("Answer: a\nmore\nanswer - b\n") == "b"
    assert extract_final_answer("\n  last line  \n\n") == "last line"
    assert gmai_letter("ANSWER: (e)") == "e" and gmai_letter("xyz") == "other"


def test_prompts_and_generation_settings_are_the_forks():
    gmai = with_scoring(get_benchmark("mmd_gmai_mmbench"), "published")
    assert gmai.question({**GMAI_OPTIONS, "answer": "A"}) == (
        "Which organ?\nOptions:\nA: Lung\nB: Liver\nC: Kidney\nD: Brain" + GMAI_POST_PROMPT)
    assert gmai_prompt(" Q ", {"A": "x", "B": "", "C": float("nan")}) == "Q\nOptions:\nA: x" + GMAI_POST_PROMPT
    assert (gmai.max_new_tokens, gmai.stop) == (2048, ())
    for task in ("mmd_slake", "mmd_pathvqa"):
        bench = with_scoring(get_benchmark(task), "published")
        assert bench.question({"question": " Is it? "}) == "Is it?\n" + VQA_POST_PROMPT
        assert (bench.max_new_tokens, bench.stop, bench.name) == (64, (), task)
    assert with_scoring(get_benchmark("mmd_slake"), "ours") is get_benchmark("mmd_slake")
    with pytest.raises(ValueError, match="multimediset has no published counterpart"):
        with_scoring(get_benchmark("multimediset"), "published")
    with pytest.raises(ValueError, match="unknown scoring 'fork'"):
        with_scoring(get_benchmark("mmd_slake"), "fork")


def test_derived_open_column():
    # The published table's PathVQA row (Qwen3-4B BiomedCLIP): overall 29.9, yes/no 57.4 on 3,362 of 6,719 rows.
    assert round(derived_open(29.9, 57.4, 6719, 3362), 1) == 2.4
    assert derived_open(50.0, 100.0, 4, 4) is None and derived_open(None, 50.0, 4, 2) is None
    # 4 rows: yes/no right, yes/no wrong, open right, open wrong (ours: lenient yes/no right on the 2nd too).
    records = [{"correct": c, "closed": k, "ours_correct": o, "ours_closed": k}
               for c, k, o in [(True, True, True), (False, True, True), (True, False, True), (False, False, False)]]
    summary = published_vqa_summary(records)
    assert (summary["accuracy"], summary["closed_accuracy"], summary["open_accuracy"]) == (50.0, 50.0, 50.0)
    assert (summary["ours_accuracy"], summary["ours_closed_accuracy"], summary["ours_open_accuracy"]) == (75, 100, 50)


def _function_tag(loader, node):
    return loader.construct_scalar(node)


def test_published_task_files_agree_with_the_published_tasks():
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", _function_tag)
    files = sorted((TASKS_DIR / "published").glob("*.yaml"))
    assert [f.stem for f in files] == ["mmd_gmai_mmbench_published", "mmd_pathvqa_published", "mmd_slake_published"]
    for path in files:
        config = yaml.load(path.read_text(), Loader=loader)
        bench = with_scoring(get_benchmark(config["task"].removesuffix("_published")), "published")
        assert config["generation_kwargs"]["until"] == [] and config["generation_kwargs"]["max_new_tokens"] == \
            bench.max_new_tokens
        assert [m["metric"] for m in config["metric_list"]] == list(bench.metrics)
        assert (path.parent / config["dataset_kwargs"]["data_files"]["test"]).is_file()
        module, _, name = config["process_results"].rpartition(".")
        assert callable(getattr(__import__(module, fromlist=[name]), name))


def test_eval_command_reports_the_forks_verdicts_beside_ours(checkpoint, task_data, tmp_path, capsys):
    out = tmp_path / "published.json"
    assert cli_main(["eval", "--model", checkpoint, "--task", "mmd_pathvqa", "--data", task_data["mmd_pathvqa"],
                     "--scoring", "published", "--max-new-tokens", "3", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "fork: open (derived)" in table and "ours: accuracy" in table
    [result] = json.loads(out.read_text())["results"]
    assert result["scoring"] == "published" and result["metrics"]["n"] == 4
    bench = with_scoring(get_benchmark("mmd_pathvqa"), "published")
    answers = ["yes", "granuloma", "no", "lung"]
    for sample, answer in zip(result["samples"], answers):
        assert sample["correct"] == bench.score({"answer": answer}, sample["reply"])["correct"]
    assert result["metrics"] == published_vqa_summary(result["samples"])


# ---- SLAKE as the fork scored it ----------------------------------------------------------------------------------
# The fork's task, written here from its behaviour: its prompt builder receives the task's keyword arguments (q_lang
# "en": a non-English row gets an empty prompt), its process_results is called without them (so it never filters),
# and its aggregation is the mean score in percent over the rows that emitted one.
FORK_TASK_KWARGS = {"q_lang": "en", "pre_prompt": "", "post_prompt": VQA_POST_PROMPT}


def fork_doc_to_text(doc, kwargs):
    if kwargs.get("q_lang") and str(doc.get("q_lang", "")).lower() != kwargs["q_lang"]:
        return ""
    return f"{kwargs['pre_prompt']}{(doc.get('question') or '').strip()}\n{kwargs['post_prompt']}".strip()


def fork_process_results(doc, results, kwargs=None):
    if kwargs and kwargs.get("q_lang") and str(doc.get("q_lang", "")).lower() != kwargs["q_lang"]:
        return {}
    predicted = normalize_vqa(extract_final_answer(results[0]))
    return {"accuracy": {"score": 1.0 if predicted and predicted == normalize_vqa(doc["answer"]) else 0.0}}


def fork_aggregate(emitted):
    scores = [e["accuracy"]["score"] for e in emitted if e]
    return 100.0 * sum(scores) / len(scores)


MIXED_SLAKE = [  # (q_lang, question, answer, made-up reply)
    ("en", "Is this a CT?", "Yes", "Yes"), ("zh", "这是CT吗?", "是", "Yes"), ("en", "Which organ?", "Liver", "liver"),
    ("zh", "哪个器官?", "肝脏", "The liver"), ("en", "How many kidneys?", "2", "three"), ("zh", "正常吗?", "否", "否"),
    ("en", "Is the lung healthy?", "No", "No."), ("zh", "有病变吗?", "是", "No"),
]


def test_published_slake_scores_every_row_as_the_fork_did():
    bench = with_scoring(get_benchmark("mmd_slake"), "published")
    docs = [{"q_lang": lang, "question": q, "answer": a} for lang, q, a, _ in MIXED_SLAKE]
    replies = [reply for *_, reply in MIXED_SLAKE]
    from datasets import Dataset

    assert len(bench.prepare(Dataset.from_list(docs))) == len(docs)  # no language filter
    for doc in docs:
        assert bench.question(doc) == fork_doc_to_text(doc, FORK_TASK_KWARGS)
    metrics = bench.summarize([bench.score(doc, reply) for doc, reply in zip(docs, replies)])
    fork_overall = fork_aggregate([fork_process_results(d, [r]) for d, r in zip(docs, replies)])
    fork_english = fork_aggregate([fork_process_results(d, [r], FORK_TASK_KWARGS) for d, r in zip(docs, replies)])
    assert metrics["n"] == 8 and metrics["n_english"] == 4
    # 3 of 4 English rows right, and 1 of 4 Chinese (the reply "否" happens to equal the reference)
    assert metrics["accuracy"] == pytest.approx(fork_overall) == 50.0
    assert metrics["english_accuracy"] == pytest.approx(fork_english) == 75.0
    assert "fork: English rows" in published_table([{"task": "mmd_slake", "metrics": metrics}])


def test_published_mode_joins_placeholder_and_question_with_no_separator():
    from PIL import Image

    from multimeditron.evaluation.published_tasks import lmms_prompt_join
    from multimeditron.inference import messages_to_chat

    image = Image.new("RGB", (8, 8))
    doc = {"question": "Is it?", "answer": "yes", "q_lang": "en", "image": image}
    for task in ("mmd_slake", "mmd_pathvqa"):
        published, ours = with_scoring(get_benchmark(task), "published"), get_benchmark(task)
        [turn], _ = messages_to_chat(published.messages(doc), "<image>", separator=published.prompt_join)
        assert turn["content"] == "<image>Is it?\n" + VQA_POST_PROMPT
        [turn], _ = messages_to_chat(ours.messages(doc), "<image>", separator=ours.prompt_join)
        assert turn["content"].startswith("<image>\nIs it?")
        assert lmms_prompt_join(f"{task}_published") == "" and lmms_prompt_join(task) == "\n"
    chinese = {**doc, "q_lang": "zh", "question": "这是什么?"}
    bench = with_scoring(get_benchmark("mmd_slake"), "published")
    [turn], _ = messages_to_chat(bench.messages(chinese), "<image>", separator=bench.prompt_join)
    assert turn["content"] == "<image>"  # the image alone, as the fork asked the Chinese rows
    assert with_scoring(get_benchmark("mmd_gmai_mmbench"), "published").prompt_join == ""
