"""Every command that takes an image folder works with a RELATIVE path, typed from the folder that holds it, from a
subfolder (`../`) and as `./`: listed image paths are absolute (`data.images.list_image_files`), so nothing joins a
relative folder twice. Paths inside a table stay relative to the table's folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import Dataset
from PIL import Image

from multimeditron.cli import main
from multimeditron.data.schema import conversation_features, image_modality, make_row
from tests.conftest import random_image
from tests.probing.conftest import write_folder

TINY = ["--expert", "retfound_green", "--tiny"]
# The three spellings of one folder `data` in `work/`: run from work/, as ./data, and from work/sub/ as ../data.
FORMS = [("work", "{name}"), ("work", "./{name}/"), ("work/sub", "../{name}")]


def _unlabelled(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "nested").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(root / "nested" / f"{i}.png")
    return root


def _segmentation(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((28, 28), dtype=np.uint8)
            mask[4:14, 6:16] = 1
            Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(mask * 255).save(root / split / "masks" / f"{i}.png")
    return root


def _table_with_relative_paths(root: Path) -> Path:
    """A MultiMediset parquet whose rows name images by paths relative to the table's own folder."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(3):
        random_image(seed=i).save(root / "images" / f"{i}.png")
        rows.append(make_row([image_modality(path=f"images/{i}.png")],
                             [{"role": "user", "content": "<|image|>\nWhat is shown?"},
                              {"role": "assistant", "content": "noise"}]))
    Dataset.from_list(rows, features=conversation_features()).to_parquet(str(root / "rows.parquet"))
    return root / "rows.parquet"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("relative")
    work = base / "work"
    (work / "sub").mkdir(parents=True)
    write_folder(work / "data", {"train": 6, "val": 3, "test": 3})
    _unlabelled(work / "unl")
    _segmentation(work / "seg")
    _table_with_relative_paths(work / "myset")
    return base


def _run(work: Path, cwd: str, argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.chdir(work / cwd)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return captured.out


@pytest.mark.parametrize("cwd,form", FORMS)
def test_probe_and_finetune_take_a_relative_image_folder(work, cwd, form, monkeypatch, capsys, tmp_path):
    data = form.format(name="data")
    out = _run(work, cwd, ["probe", *TINY, "--data", data, "--protocol", "knn", "--bootstrap", "0",
                           "--out", str(tmp_path / "probe")], monkeypatch, capsys)
    assert "images: train" in out
    _run(work, cwd, ["finetune", *TINY, "--data", data, "--epochs", "1", "--warmup-epochs", "0",
                     "--batch-size", "4", "--out", str(tmp_path / "ft")], monkeypatch, capsys)
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["runs"]


@pytest.mark.parametrize("cwd,form", FORMS)
def test_adapt_and_segment_take_a_relative_folder(work, cwd, form, monkeypatch, capsys, tmp_path):
    out = _run(work, cwd, ["adapt", *TINY, "--data", form.format(name="unl"), "--epochs", "1", "--batch-size", "3",
                           "--out", str(tmp_path / "adapt")], monkeypatch, capsys)
    assert "6 images" in out
    _run(work, cwd, ["segment", *TINY, "--data", form.format(name="seg"), "--epochs", "1", "--batch-size", "3",
                     "--overlays", "1", "--out", str(tmp_path / "seg")], monkeypatch, capsys)
    assert (tmp_path / "seg" / "segmentation.json").is_file()


@pytest.mark.parametrize("cwd,form", FORMS)
def test_convert_image_folder_then_check_dataset_with_relative_paths(work, cwd, form, monkeypatch, capsys, tmp_path):
    _run(work, cwd, ["convert", "image-folder", "--root", form.format(name="data"), "--question",
                     "What shape is shown?", "--out", str(tmp_path / "conv"), "--no-progress"], monkeypatch, capsys)
    out = _run(work, cwd, ["check-dataset", form.format(name="myset") + "/rows.parquet", "--decode"],
               monkeypatch, capsys)
    assert "3 rows checked, 0 bad" in out
    from datasets import load_from_disk
    converted = load_from_disk(str(tmp_path / "conv"))
    assert {split: len(ds) for split, ds in converted.items()} == {"train": 12, "val": 6, "test": 6}


def test_eval_data_with_relative_image_paths(work, monkeypatch, capsys, tmp_path):
    from tests.conftest import tiny_model

    model, processor = tiny_model()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = _run(work, "work/sub", ["eval", "--model", str(tmp_path / "model"), "--task", "multimediset",
                                  "--data", "../myset/rows.parquet", "--max-new-tokens", "2",
                                  "--out", str(tmp_path / "eval.json")], monkeypatch, capsys)
    result = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    assert result["metrics"]["n"] == 3, out


def test_quickstart_expert_half_with_a_relative_out(tmp_path, monkeypatch):
    from multimeditron.quickstart_expert import warm_up_expert

    monkeypatch.chdir(tmp_path)
    spec = {"id": "retfound_green", "tiny": True}
    warmed = warm_up_expert(Path("qs"), spec, seed=0, num_images=40, epochs=1)
    assert (tmp_path / "qs" / "expert_warmup" / "best").is_dir()
    assert warmed.command == "multimeditron finetune --config qs/expert_warmup.yaml"
    assert main(["finetune", "--config", "qs/expert_warmup.yaml", "--dry-run"]) == 0  # its relative paths resolve


# ---- the README's expert examples, run as written -----------------------------------------------------------------
README = Path(__file__).resolve().parents[2] / "README.md"
EXPERT_COMMANDS = ("probe", "adapt", "finetune", "segment")


def readme_expert_commands() -> list[list[str]]:
    """The `multimeditron probe|adapt|finetune|segment` lines of the README's expert section, continuation lines
    joined and `# comments` dropped; lines elided with `...` and runs inside a quickstart output (`cd runs/...`)
    are not standalone commands."""
    import shlex

    text = README.read_text()
    section = text[text.index("## Evaluating and adapting experts"):]
    section = section[:section.index("\n## ", 5)]
    commands, pending = [], ""
    for block in section.split("```bash")[1:]:
        for line in block.split("```")[0].splitlines():
            line = pending + line
            pending = ""
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            if not line.startswith("multimeditron "):
                continue
            words = shlex.split(line.split("  #")[0])  # a comment starts after spaces; `DIR#0` is a spec
            if words[1] in EXPERT_COMMANDS and "..." not in words:
                commands.append(words[1:])
    return commands


def readme_recipes() -> dict[str, dict]:
    """The README's YAML recipes (a ```yaml block opening with `# multimeditron COMMAND --config NAME.yaml`), by
    file name, their checkpoints replaced as `tiny_version` replaces them."""
    import re

    text = README.read_text()
    recipes = {}
    for block in text.split("```yaml")[1:]:
        body = block.split("```")[0]
        match = re.match(r"\s*# multimeditron \w+ --config (\S+\.yaml)", body)
        if match:
            recipe = yaml.safe_load(body)
            spec = recipe.get("expert", {}).get("spec")
            if isinstance(spec, str):
                recipe["expert"]["spec"] = re.sub(r":/ckpt/\S*$", "", spec)
            recipes[match.group(1)] = recipe
    return recipes


def tiny_version(argv: list[str]) -> list[str]:
    """The same command on a tiny random-weight expert (no checkpoint file exists here) and one short epoch: each
    `ID:/ckpt/FILE` becomes `ID`, a mapping's `checkpoint: /ckpt/...` is dropped, a saved VLM (`DIR#i`, needs a
    trained model) is left out, `--set deepspeed=...` is dropped (DeepSpeed under its launcher is
    tests/adaptation/test_distributed.py's); data paths and every other flag stay as written."""
    import re

    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--set":
            value = next(words)
            if not value.startswith("deepspeed="):
                out += ["--set", value]
        elif word == "--expert":
            spec = next(words)
            if "#" in spec:
                continue
            spec = re.sub(r"checkpoint:\s*/ckpt/[^,}]*,?\s*", "", spec)
            spec = re.sub(r":/ckpt/\S*$", "", spec)
            out += ["--expert", spec]
        else:
            out.append(word)
    out.append("--tiny")
    if argv[0] != "probe" and "--eval" not in argv:
        out += ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4"]
    if "--eval" not in argv:
        out.append("--overwrite")  # the README's examples are alternatives, several of them writing one --out
    if argv[0] == "segment":
        out += ["--overlays", "1"]
    return out


def _ct_table(path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(48):  # two slices per study, the labels and split a study's
        study = i // 2
        rows.append({"image": {"bytes": _png(rng), "path": None}, "hemorrhage": study % 2,
                     "fracture": int(study % 3 == 0), "study": f"s{study}",
                     "split": ["train", "train", "val", "test"][(study // 2) % 4]})
    Dataset.from_list(rows).to_parquet(str(path))


def _png(rng: np.random.Generator) -> bytes:
    import io

    buffer = io.BytesIO()
    # a greyscale 16-bit slice: an intensity window (`--intensity ct`) reads raw values
    Image.fromarray(rng.integers(0, 1200, (24, 24)).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_readme_expert_examples_run_as_written(tmp_path, monkeypatch, capsys):
    commands = readme_expert_commands()
    assert [c[0] for c in commands].count("finetune") >= 3 and {"probe", "adapt", "segment"} <= {c[0] for c in commands}
    write_folder(tmp_path / "retina", {"train": 6, "val": 3, "test": 3})
    _unlabelled(tmp_path / "fundus_unlabelled")
    _segmentation(tmp_path / "organs")
    _ct_table(tmp_path / "ct_slices.parquet")
    for name, recipe in readme_recipes().items():
        (tmp_path / name).write_text(yaml.safe_dump(recipe))
    assert readme_recipes(), "the README shows a recipe file"
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        if "--resume" in argv:  # needs a stopped run: tests/cli/test_expert_errors.py resumes one
            continue
        code = main(tiny_version(argv))
        captured = capsys.readouterr()
        assert code == 0, f"{' '.join(argv)}\n{captured.err[-2000:]}"
    assert (tmp_path / "runs" / "adapt" / "final").is_dir() and (tmp_path / "runs" / "ft" / "best").is_dir()
    assert (tmp_path / "runs" / "seg" / "segmentation.json").is_file()
