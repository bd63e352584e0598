"""A table of broken run configs: each one is refused by `train --dry-run` and by `train` with a one-line
`error: ...` naming the key at fault, before any model is built. Missing paths (which may appear later: an earlier
stage's output, data on another machine) are listed by the dry run and refused by the real run."""
from __future__ import annotations

import json

import pytest
import yaml

from multimeditron.cli import main

# (id, change applied to the base config, key named in the error, refused by the dry run too)
CASES = [
    ("max_steps_string", {"training_args.max_steps": "3"}, "training_args.max_steps", True),
    ("epochs_word", {"training_args.num_train_epochs": "two"}, "training_args.num_train_epochs", True),
    ("scheduler_typo", {"training_args.lr_scheduler_type": "cosinee"}, "training_args.lr_scheduler_type", True),
    ("eval_without_data", {"training_args.eval_strategy": "steps"}, "training_args.eval_strategy", True),
    ("flash_attention_here", {"model.attn_implementation": "flash_attention_2"}, "model.attn_implementation", True),
    ("expert_option_typo", {"model.experts": [{"id": "timm:vit_small_patch16_224", "tiny": True,
                                               "options": {"dpeth": 2}}]}, "model.experts[0].options", True),
    ("unknown_expert", {"model.experts": [{"id": "biomedclip2"}]}, "model.experts[0].id", True),
    ("lora_targets_nothing", {"stage": "end2end", "lora": {"target_modules": ["q_prj"]}}, "lora.target_modules",
     True),
    ("unknown_tiny_preset", {"model.llm": "tiny-qwen4"}, "model.llm", True),
    ("cat_with_one_expert", {"model.fusion": "cat"}, "model.fusion", True),
    ("top_k_without_learned_router", {"model.router_top_k": 1}, "model.router_top_k", True),
    ("negative_balance_coefficient", {"model.router_aux_loss_coef": -1.0}, "model.router_aux_loss_coef", True),
    ("missing_deepspeed_file", {"deepspeed": "/nonexistent/ds.json"}, "deepspeed", True),
    ("contradicting_default_key", {"model": {"base_model": "{stored}", "fusion": "none"}}, "model.fusion", True),
    ("plain_llm_as_base_model", {"model": {"base_model": "{llm_folder}"}}, "model.base_model", True),
    ("set_bad_list_index", "--set data.train[4].weight=2", "data.train has 1 item", True),
    ("resume_without_checkpoint", {"training_args.resume_from_checkpoint": True},
     "training_args.resume_from_checkpoint", False),
    ("missing_local_llm", {"model.llm": "/nonexistent/llm"}, "model.llm", False),
    ("missing_base_model", {"model": {"base_model": "/nonexistent/stage1/final"}}, "model.base_model", False),
    ("folder_without_model", {"model": {"base_model": "{empty}"}}, "model.base_model", False),
    ("missing_dataset", {"data.train": [{"path": "/nonexistent/data"}]}, "data.train[0].path", False),
    ("missing_split", {"data.train": [{"path": "{data}", "split": "validation"}]}, "data.train[0].path", False),
    ("empty_dataset", {"data.train": [{"path": "{empty_data}"}]}, "data.train[0].path", False),
    # a finetune/adapt output named with another expert's id (`--set model.experts[0].id=...`): was refused by the
    # dry run only, the real run raised a ValueError traceback
    ("adapted_folder_of_another_expert", {"model.experts": [{"id": "mermed_fm", "checkpoint": "{adapted}"}]},
     "model.experts[0]: expert 'mermed_fm' with checkpoint", True),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, synthetic_dir):
    from multimeditron.data.schema import conversation_features
    from tests.conftest import GENERALIST, SPECIALIST, tiny_model

    root = tmp_path_factory.mktemp("broken")
    model, processor = tiny_model("tiny-llama", [GENERALIST, SPECIALIST], fusion="avg")
    model.save_pretrained(root / "stored")
    processor.save_pretrained(root / "stored")
    (root / "llm").mkdir()
    (root / "llm" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "empty").mkdir()
    import datasets

    features = conversation_features()
    datasets.Dataset.from_dict({k: [] for k in features}, features=features).save_to_disk(str(root / "empty_data"))
    from multimeditron.experts.adapted import save_adapted_expert
    from multimeditron.experts.registry import build_expert, resolved_spec

    spec = {"id": "retfound_green", "tiny": True}
    expert = build_expert(spec)
    save_adapted_expert(expert, resolved_spec(spec, expert), root / "adapted")
    return {"stored": root / "stored", "llm_folder": root / "llm", "empty": root / "empty",
            "empty_data": root / "empty_data", "data": synthetic_dir, "adapted": root / "adapted"}


def write_config(tmp_path, folders, change) -> str:
    config = {"model": {"llm": "tiny-qwen3", "experts": [{"id": "timm:vit_small_patch16_224", "tiny": True}]},
              "data": {"train": [{"path": str(folders["data"]), "split": "train"}], "max_sequence_length": 256},
              "stage": "alignment",
              "training_args": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "save_strategy": "no"}}
    if isinstance(change, dict):
        text = json.dumps(change)
        for name, folder in folders.items():
            text = text.replace("{" + name + "}", str(folder))
        for key, value in json.loads(text).items():
            *sections, leaf = key.split(".")
            node = config
            for section in sections:
                node = node[section]
            node[leaf] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_broken_config_is_refused_before_any_model_is_built(case, tmp_path, folders, monkeypatch, capsys):
    _, change, key, dry_run_refuses = case

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the config was refused")

    monkeypatch.setattr("multimeditron.training.run.load_run_model", no_model)
    path = write_config(tmp_path, folders, change)
    extra = change.split(" ", 1) if isinstance(change, str) else []

    code = main(["train", "--config", path, *extra, "--dry-run"])
    captured = capsys.readouterr()
    if dry_run_refuses:
        assert code != 0
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
        assert key in captured.err and "Traceback" not in captured.err
    else:
        assert code == 0
        assert any(line.strip().startswith(f"- {key}:") for line in captured.out.splitlines()), captured.out

    code = main(["train", "--config", path, *extra])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert key in captured.err


def test_debug_shows_the_traceback(tmp_path, folders):
    from multimeditron.config import ConfigError

    path = write_config(tmp_path, folders, {"training_args.max_steps": "3"})
    with pytest.raises(ConfigError, match="training_args.max_steps"):
        main(["train", "--config", path, "--dry-run", "--debug"])
