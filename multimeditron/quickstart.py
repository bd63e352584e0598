"""The quickstart: synthetic medical VQA -> tiny model trained in two stages through the YAML path -> held-out scores.

Runs on 2 CPU cores in minutes. The tiny expert starts from random weights (no hub here), so both stages train it:
stage 1 is `vision_alignment` (experts + projector, LLM frozen), stage 2 is `full`. With pretrained experts the
cookbook's stages are `alignment` then `end2end`.

Why stage 1 must train the expert with the LLM frozen (measured on the side questions, 2 CPU cores): training
everything from the start, the LLM first learns the answer prior, and the left/right answer then stays at exactly
50 % on train and test (the image path gets no useful gradient); with a frozen LLM the expert learns the finding's
position in a few epochs (>= 80 % ranking left vs right), and the `full` stage then turns that into answers.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

# 8-px patches: the findings are a few pixels wide, and 16-px patches average them away (measured: chance level).
# The position embedding starts as a 2D sin-cos table: from timm's random start the expert did not learn where a
# finding lies within the budget (side questions at chance, even with a mean-pool linear head on the expert alone).
EXPERT = {"id": "timm:vit_small_patch16_224", "tiny": True, "image_size": 64,
          "options": {"patch_size": 8, "embed_dim": 64, "num_heads": 4, "pos_embed_init": "sincos"}}
STAGE1_EPOCHS = 5
STAGE2_EPOCHS = 8


def stage_configs(out: Path, data_dir: Path, seed: int, epochs: tuple[int, int] = (STAGE1_EPOCHS, STAGE2_EPOCHS)
                  ) -> dict[str, dict[str, Any]]:
    """The two run configs the quickstart writes to YAML and trains, as a user would."""
    common_data = {"train": [{"path": str(data_dir), "split": "train"}], "max_sequence_length": 256,
                   "packing": False, "on_bad_sample": "error"}
    common_args = {"per_device_train_batch_size": 16, "logging_steps": 50, "save_strategy": "no",
                   "report_to": "none", "dataloader_num_workers": 0, "lr_scheduler_type": "cosine",
                   "warmup_steps": 0.05, "weight_decay": 0.0, "disable_tqdm": False}
    return {
        "stage1_alignment": {
            "model": {"llm": "tiny-qwen3", "experts": [EXPERT], "fusion": "none", "projection": "shared"},
            "data": common_data, "stage": "vision_alignment", "seed": seed,
            "training_args": {**common_args, "output_dir": str(out / "stage1"), "num_train_epochs": epochs[0],
                              "learning_rate": 7e-4},
        },
        "stage2_full": {
            "model": {"base_model": str(out / "stage1" / "final")},
            "data": common_data, "stage": "full", "seed": seed,
            "training_args": {**common_args, "output_dir": str(out / "stage2"), "num_train_epochs": epochs[1],
                              "learning_rate": 7e-4},
        },
    }


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Accuracy per question type beside its chance level (percent), as `evaluate_synthetic` returns them."""
    lines = ["| question type | accuracy % | chance % | n |", "|---|---|---|---|"]
    rows = [*metrics["per_type"].items(), ("overall", metrics)]
    for name, row in rows:
        lines.append(f"| {name} | {row['accuracy']:.1f} | {row['chance']:.1f} | {row['n']} |")
    return "\n".join(lines)


def run_quickstart(out: str | Path, num_train: int = 6000, num_test: int = 400, seed: int = 0,
                   epochs: tuple[int, int] = (STAGE1_EPOCHS, STAGE2_EPOCHS)) -> dict[str, Any]:
    from multimeditron.config import load_config
    from multimeditron.data.synthetic import generate_synthetic_vqa
    from multimeditron.evaluation.evaluator import ablation_table, evaluate_synthetic
    from multimeditron.inference import generate_answers, load_pretrained
    from multimeditron.training.run import run_training

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir = out / "synthetic_vqa"
    print(f"[1/4] generating the synthetic medical VQA set ({num_train} train / {num_test} test) in {data_dir}")
    dataset = generate_synthetic_vqa(data_dir, num_train=num_train, num_test=num_test, seed=seed)
    for index, (name, config) in enumerate(stage_configs(out, data_dir, seed, epochs).items(), start=2):
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"[{index}/4] training {name} from {path}")
        run_training(load_config(path))
    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out / "stage2" / "final", final)
    print(f"[4/4] evaluating {final} on the held-out split")
    model, processor = load_pretrained(final)
    metrics = evaluate_synthetic(model, processor, dataset["test"], batch_size=32, image_ablation=True)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("\n" + format_metrics_table(metrics))
    # how much the answers rely on the image: the same questions with every image replaced
    print("\nimage ablation (accuracy %):\n" + ablation_table([{"task": "synthetic_vqa", "metrics": metrics,
                                                              "ablation": metrics["ablation"]}]))
    example = dataset["test"][0]
    from multimeditron.data.images import decode_image

    image = decode_image(example["modalities"][0]["value"]["bytes"])
    question = example["conversations"][0]["content"]
    answer = generate_answers(model, processor, [([{"role": "user", "content": question}], [image])],
                              max_new_tokens=8)[0]
    print(f"\nexample test image, question: {question.replace(processor.attachment_token, '<image>').strip()}")
    print(f"model answer: {answer!r}   reference: {example['answer']!r}")
    print(f"\nmodel saved to {final}; metrics in {out / 'metrics.json'}; {metrics['seconds']:.0f} s in all")
    return metrics
