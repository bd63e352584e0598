"""The lmms-eval integration: the light entry point, the model class (batching, order, `until`, log-likelihood,
ranks), the task files, and one run of the real `python -m lmms_eval` command checked against `multimeditron eval`."""
from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lmms_eval.api.instance import Instance

from multimeditron.evaluation import TASKS_DIR
from multimeditron.evaluation.benchmarks import BENCHMARKS, get_benchmark
from multimeditron.evaluation.data import load_table
from multimeditron.evaluation.evaluator import evaluate_rows
from multimeditron.inference import continuation_logprob, generate_answers, load_pretrained, messages_to_chat
from tests.conftest import random_image

REPO = Path(__file__).resolve().parents[2]
LMMS_TASKS = ["mmd_gmai_mmbench", "mmd_slake", "mmd_pathvqa"]


def test_entry_point_imports_without_torch_and_registers_the_chat_model():
    code = ("import sys, multimeditron_lmms_plugin as plugin\n"
            "assert 'torch' not in sys.modules and 'lmms_eval' not in sys.modules, 'heavy import'\n"
            "from lmms_eval.models import MODEL_REGISTRY_V2\n"
            "assert plugin.MANIFEST.model_id == 'multimeditron'\n"
            "print(MODEL_REGISTRY_V2.resolve('multimeditron').class_path)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "multimeditron.evaluation.lmms_model.MultiMeditronLMMS"
    from lmms_eval.models import get_model

    assert get_model("multimeditron").is_simple is False


def _instance(args: tuple, request_type: str = "generate_until") -> Instance:
    return Instance(request_type=request_type, arguments=args, idx=0,
                    metadata={"task": args[-2], "doc_id": args[-3], "repeats": 1})


@pytest.fixture(scope="module")
def lmms_model(checkpoint):
    from multimeditron.evaluation.lmms_model import MultiMeditronLMMS

    model = MultiMeditronLMMS(pretrained=checkpoint, batch_size="2", max_batch_size=None, device=None)
    docs = [{"question": q, "image": random_image(seed=s)} for s, q in enumerate(
        ["Is there a lesion?", "Which organ?", "What modality is this image, exactly?", "Left or right?"])]
    model.task_dict = {"toy": {"test": docs}}
    return model


def _messages(doc):
    content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]
    return [{"role": "user", "content": content}]


def test_generate_until_batches_keeps_order_and_honours_until(lmms_model):
    model = lmms_model
    short, long = {"max_new_tokens": 4, "until": ["\n\n"]}, {"max_new_tokens": 10, "until": ["\n\n"]}
    plan = [(0, short), (1, long), (2, short), (3, long), (1, short)]
    requests = [_instance(("ctx", _messages, kwargs, doc_id, "toy", "test")) for doc_id, kwargs in plan]
    answers = model.generate_until(requests)
    expected = [generate_answers(model.model, model.processor,
                                 [messages_to_chat(_messages(model.task_dict["toy"]["test"][d]), "<|image|>")],
                                 max_new_tokens=k["max_new_tokens"], stop=["\n\n"], progress=False)[0] for d, k in plan]
    assert answers == expected and answers[1] != answers[4]
    stop = answers[1][1:3]
    [cut] = model.generate_until([_instance(("ctx", _messages, {"max_new_tokens": 10, "until": stop}, 1, "toy",
                                             "test"))])
    assert stop not in cut and answers[1].startswith(cut)


def test_loglikelihood_is_a_negative_log_probability(lmms_model):
    model = lmms_model
    doc = model.task_dict["toy"]["test"][0]
    request = _instance(("Is there a lesion?", " yes", lambda d: [d["image"]], 0, "toy", "test"), "loglikelihood")
    [(logprob, greedy)] = model.loglikelihood([request])
    reference = continuation_logprob(model.model, model.processor, "<|image|> Is there a lesion?", " yes",
                                     [doc["image"]])
    assert logprob < 0 and (logprob, greedy) == reference
    with pytest.raises(NotImplementedError, match="multi-round"):
        model.generate_until_multi_round([])


@pytest.mark.parametrize("state_device", ["cuda:1", "cpu"])
def test_each_rank_takes_its_rank_and_device_from_accelerate(checkpoint, monkeypatch, state_device):
    """Rank, world size and device come from accelerate's `PartialState` (what torchrun / accelerate launch set up),
    not from environment variables read again here; the model itself stays on the CPU in this test."""
    import accelerate
    import torch

    from multimeditron.evaluation import lmms_model
    from multimeditron.evaluation.lmms_model import MultiMeditronLMMS

    class SecondRank:  # what PartialState reports in the second of two processes
        num_processes, process_index, device = 2, 1, torch.device(state_device)

    chosen = []
    monkeypatch.setattr(accelerate, "PartialState", SecondRank)
    monkeypatch.setattr(lmms_model, "resolve_device", lambda device: chosen.append(str(device)) or torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    model = MultiMeditronLMMS(pretrained=checkpoint, batch_size="auto", device="cuda:0", max_new_tokens="5")
    assert (model.rank, model.world_size, model.batch_size, model.max_new_tokens) == (1, 2, 8, 5)
    assert chosen == [state_device]  # the rank's own device, whatever --device says


def test_batch_size_in_model_args_wins_over_the_harness_default(checkpoint):
    from multimeditron.evaluation.lmms_model import MultiMeditronLMMS

    # what lmms-eval's CLI does with `--model_args pretrained=DIR,batch_size=3` (its --batch_size defaults to 1)
    model = MultiMeditronLMMS.create_from_arg_string(f"pretrained={checkpoint},batch_size=3",
                                                     {"batch_size": 1, "max_batch_size": None, "device": None})
    assert model.batch_size == 3
    assert MultiMeditronLMMS.create_from_arg_string(f"pretrained={checkpoint}", {"batch_size": "4"}).batch_size == 4


def _function_tag(loader, node):
    return loader.construct_scalar(node)


def test_task_files_agree_with_the_built_in_tasks():
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", _function_tag)
    files = sorted(TASKS_DIR.glob("*.yaml"))
    assert [f.stem for f in files] == sorted(LMMS_TASKS + ["multimediset"])
    for path in files:
        config = yaml.load(path.read_text(), Loader=loader)
        bench = BENCHMARKS[config["task"]]
        assert config["generation_kwargs"]["until"] == list(bench.stop)
        assert config["generation_kwargs"]["max_new_tokens"] == bench.max_new_tokens
        assert [m["metric"] for m in config["metric_list"]] == list(bench.metrics)
        assert (TASKS_DIR / config["dataset_kwargs"]["data_files"]["test"]).is_file()


def _rig_answers(checkpoint: str, task_data: dict[str, str], directory: Path) -> dict[str, str]:
    """Copies of the task data where some reference answers are what the tiny model replies (as the README command
    runs it: bfloat16, batches of 8), so that the scores compared below are not all zero: PathVQA's and SLAKE's first
    open question, GMAI's picked letters."""
    model, processor = load_pretrained(checkpoint, dtype="bfloat16")
    rigged = {}
    for task, path in task_data.items():
        bench = get_benchmark(task)
        raw = load_table(path, None)
        samples = evaluate_rows(model, processor, bench, bench.prepare(raw), progress=False)["samples"]
        questions = bench.prepare(raw)["question"]
        if task == "mmd_gmai_mmbench":
            if not any(s["picked"] for s in samples):
                raw, samples = _gmai_option_the_model_picks(model, processor, bench, raw, samples)
            new = {q: s["picked"] for q, s in zip(questions, samples) if s["picked"]}
        else:
            new = dict([next((q, s["reply"]) for q, s in zip(questions, samples) if not s["closed"])])
        rigged[task] = str(directory / Path(path).name)
        raw.map(lambda q, a: {"answer": new.get(q, a)}, input_columns=["question", "answer"]).to_parquet(rigged[task])
    return rigged


def _gmai_option_the_model_picks(model, processor, bench, raw, samples):
    """When the tiny model's replies pick no letter, a copy where one row's empty option E is a word of that row's
    reply and the (re-generated) reply still names it, so GMAI's accuracy can be above zero."""
    from multimeditron.evaluation.scoring import normalize_answer

    for row, sample in enumerate(samples):
        if raw[row]["E"] is not None:
            continue
        for word in dict.fromkeys(normalize_answer(sample["reply"]).split()):
            if len(word) < 3 or not word.isalpha():
                continue
            trial = raw.map(lambda e, i: {"E": word if i == row else e}, input_columns=["E"], with_indices=True)
            again = evaluate_rows(model, processor, bench, trial, progress=False)["samples"]
            if again[row]["picked"] == "E":
                return trial, again
    raise AssertionError("no GMAI option the tiny model picks could be found; the test cannot check accuracy")


def readme_lmms_eval_command() -> str:
    """The first command of the README's lmms-eval block, continuation lines included, exactly as written."""
    text = (REPO / "README.md").read_text()
    block = text.split("With lmms-eval", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        lines.append(line)
        if not line.endswith("\\"):
            break
    return "\n".join(lines)


@pytest.mark.slow
def test_the_readme_lmms_eval_command_runs_and_matches_the_built_in_evaluator(checkpoint, task_data, tmp_path,
                                                                               monkeypatch):
    """The README's lmms-eval command line, run as written (only the data paths replaced by tiny copies; its
    `batch_size=8` in model_args beside lmms-eval's own), gives the scores and replies of `multimeditron eval`."""
    data = _rig_answers(checkpoint, task_data, tmp_path)
    command = readme_lmms_eval_command()
    assert "batch_size=8" in command and "dtype=bfloat16" in command and "--log_samples" in command
    for placeholder, task in (("/data/gmai_val.parquet", "mmd_gmai_mmbench"), ("/data/SLAKE/test.parquet", "mmd_slake"),
                              ("/data/path-vqa", "mmd_pathvqa")):
        assert placeholder in command, placeholder
        command = command.replace(placeholder, data[task])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets"), "CHECKPOINT": checkpoint,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    found = glob.glob(str(tmp_path / "results" / "**" / "*_results.json"), recursive=True)
    assert found, f"no results file; lmms-eval said:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    harness = json.loads(Path(found[0]).read_text())["results"]

    from multimeditron.cli import main

    for task, path in data.items():
        monkeypatch.setenv(get_benchmark(task).env_var, path)
    out = tmp_path / "builtin.json"
    assert main(["eval", "--model", checkpoint, "--task", ",".join(LMMS_TASKS), "--batch-size", "8", "--dtype",
                 "bfloat16", "--out", str(out)]) == 0
    builtin = {r["task"]: r for r in json.loads(out.read_text())["results"]}

    for task in LMMS_TASKS:
        for metric in get_benchmark(task).metrics:
            ours, theirs = builtin[task]["metrics"][metric], harness[task][f"{metric},none"]
            assert isinstance(theirs, (int, float)), (task, metric, theirs)
            assert (ours is None and math.isnan(theirs)) or theirs == pytest.approx(ours), (task, metric)
        [samples_file] = glob.glob(str(tmp_path / "results" / "**" / f"*_samples_{task}.jsonl"), recursive=True)
        replies = {}
        for line in Path(samples_file).read_text().splitlines():
            sample = json.loads(line)
            reply = sample["filtered_resps"]
            replies[sample["doc_id"]] = reply[0] if isinstance(reply, list) else reply
        assert [replies[i] for i in range(len(replies))] == [s["reply"] for s in builtin[task]["samples"]]
    assert builtin["mmd_gmai_mmbench"]["metrics"]["accuracy"] > 0
    assert builtin["mmd_pathvqa"]["metrics"]["open_accuracy"] == 50.0  # one of its two open questions rigged
    assert builtin["mmd_slake"]["metrics"]["open_accuracy"] == 50.0
    assert builtin["mmd_slake"]["metrics"]["n"] == 4  # English rows only


def test_published_tasks_join_placeholder_and_question_as_the_fork(lmms_model):
    doc = lmms_model.task_dict["toy"]["test"][0]
    lmms_model.task_dict["mmd_slake_published"] = {"test": [doc]}
    chats = {task: lmms_model._chat_request(_instance(("ctx", _messages, {}, 0, task, "test")))[0][0]["content"]
             for task in ("toy", "mmd_slake_published")}
    assert chats == {"toy": "<|image|>\nIs there a lesion?", "mmd_slake_published": "<|image|>Is there a lesion?"}
