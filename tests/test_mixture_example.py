"""The README's mixture example runs as written, from a scratch folder with relative paths: its `multimeditron`
commands (two CLIP experts from two cookbook recipes in one call, the gate, the MoE VLM's two stages, `eval`) on
smaller drawn sets and fewer epochs, and `eval` shows the gate sending each modality to the expert trained for it."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from multimeditron.cli import main
from multimeditron.data.synthetic import generate_synthetic_vqa
from multimeditron.data.synthetic_captions import generate_caption_images

ROOT = Path(__file__).resolve().parents[1]
# Fewer epochs and shorter answers than written; every other value is the README's (the cookbook's recipes).
FASTER = {"train-expert": ["--set", "training_args.num_train_epochs=3"],
          "train": ["--set", "training_args.num_train_epochs=1"], "eval": ["--max-new-tokens", "2"]}


def example_block() -> str:
    """The bash block of the README's mixture section that uses the cookbook/mixture/ recipes."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The mixture's parts"):]
    section = section[:section.index("\n### ", 5)]
    blocks = [part.split("```")[0] for part in section.split("```bash")[1:]]
    return next(block for block in blocks if "cookbook/mixture/" in block)


def example_commands(block: str) -> list[list[str]]:
    commands, pending = [], ""
    for line in block.splitlines():
        line, pending = pending + line, ""
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
        elif line.startswith("multimeditron "):
            commands.append(shlex.split(line.split("  #")[0])[1:])
    return commands


def test_readme_mixture_example_runs_and_routes_each_modality_to_its_expert(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    block = example_block()
    commands = example_commands(block)
    assert [c[0] for c in commands] == ["train-expert", "train-gate", "train", "train", "eval"], commands
    # the data lines of the block, here with fewer rows
    assert "generate_caption_images as g; g('drawn'" in block and "generate_synthetic_vqa as g; g('drawn_vqa'" in block
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cookbook").symlink_to(ROOT / "cookbook")  # the example runs from a folder that has the cookbook
    generate_caption_images("drawn", 90, 30, 30, image_size=32)
    generate_synthetic_vqa("drawn_vqa", 48, 24, image_size=32)
    for argv in commands:
        code = main(argv + FASTER.get(argv[0], []))
        captured = capsys.readouterr()
        assert code == 0, f"{' '.join(argv)}\n{captured.err[-2000:]}"
    results = next(Path("runs").glob("*.json"))
    usage = json.loads(results.read_text())["results"][0]["router_usage"]
    assert usage["experts"] == ["xray_clip", "fundus_histo"]
    per = usage["per_modality"]
    assert per["x-ray"]["usage"]["xray_clip"] >= 0.9, per
    assert per["fundus"]["usage"]["fundus_histo"] >= 0.9 and per["histology"]["usage"]["fundus_histo"] >= 0.9, per
    assert re.search(r"\| x-ray \| \d+ \| 1\.00 \| 0\.00 \|", captured.out), captured.out
