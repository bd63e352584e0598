"""Run by test_zero3.py, alone or under torchrun: three training steps of a tiny two-expert model with a learned top-1
router, ranks seeing different experts and text-only batches. Writes the losses and each rank's routing as JSON.

    python -m tests.training.zero3_worker OUT_DIR [DEEPSPEED_JSON]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image

import multimeditron as mm
from multimeditron.data import SFTCollator
from multimeditron.training.stages import apply_stage
from multimeditron.training.trainer import MultiMeditronTrainer
from tests.conftest import GENERALIST, SPECIALIST

# The global batch of each step, in order; with two ranks the first two rows go to rank 0, the last two to rank 1.
# Dark images route to expert 0 (the generalist, which always runs), bright ones to expert 1.
STEPS = [["dark", "dark", "bright", "bright"],  # rank 0 routes to expert 0 only, rank 1 to expert 1
         ["text", "text", "dark", "bright"],  # rank 0 has no image
         ["bright", "dark", "text", "text"]]  # rank 1 has no image


def route_by_brightness(model) -> None:
    """Set the gate so that the generalist's pooled feature of a bright canvas selects expert 1, a dark one expert 0."""
    size = model.vision.experts[0].image_size
    with torch.no_grad():
        dark, bright = (model.vision.experts[0](torch.full((1, 3, size, size), v)).mean(dim=1)[0] for v in (0.1, 0.9))
        direction = (bright - dark) / (bright - dark).norm() ** 2 * 20  # logit gap of +-10 at the two kinds
        gate = model.vision.router.gate
        gate.weight.zero_()
        gate.bias.zero_()
        gate.weight[1] = direction
        gate.bias[1] = -(direction * (bright + dark) / 2).sum()


def feature(processor, kind: str, index: int) -> dict:
    answer = f"Answer {index} {kind}."
    if kind == "text":
        messages = [{"role": "user", "content": f"A question {index} without an image?"}]
        images = None
    else:
        messages = [{"role": "user", "content": f"{processor.attachment_token}\nWhat does scan {index} show?"}]
        value = 25 if kind == "dark" else 230
        images = [[Image.new("RGB", (32, 32), (value, value + index, value))]]
    text = processor.apply_chat_template(messages + [{"role": "assistant", "content": answer}])
    batch = processor([text], images=images)
    ids = batch["input_ids"][0].tolist()
    labels = [-100 if t == processor.image_token_id else t for t in ids]
    out = {"input_ids": ids, "labels": labels}
    if images:
        out["pixel_values"] = batch["pixel_values"]
    return out


def main(out: Path, deepspeed: str | None) -> None:
    from transformers import TrainingArguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    # Built before the DeepSpeed arguments exist, as `multimeditron train` does: no zero.Init, DeepSpeed partitions
    # the built model when the Trainer starts.
    model, processor = mm.build_model("tiny-qwen3", [GENERALIST, SPECIALIST], fusion="avg", router="learned",
                                      router_top_k=1)
    apply_stage(model, "end2end")  # experts frozen: the generalist's features, hence the routing, stay put
    route_by_brightness(model)
    # The balance term is a statistic of each micro-batch (of each rank's share), not a sum over samples: with it, one
    # and two processes differ by design. Off here; the model still returns it (aux_loss), as ZeRO-3 must see.
    model.config.router_aux_loss_coef = 0.0
    args = TrainingArguments(
        output_dir=str(out / "trainer"), use_cpu=True, per_device_train_batch_size=4 // world, max_steps=len(STEPS),
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", remove_unused_columns=False,
        train_sampling_strategy="sequential", dataloader_num_workers=0, disable_tqdm=True, seed=0,
        deepspeed=deepspeed, ddp_backend="gloo" if world > 1 else None)
    rows = [feature(processor, kind, i) for i, kind in enumerate(kind for step in STEPS for kind in step)]

    routing: list[dict] = []

    def record(module, inputs, output) -> None:
        selected = output.get("expert_mask")
        routing.append({"experts": None if selected is None else selected.any(dim=0).tolist()})

    model.register_forward_hook(record)
    trainer = MultiMeditronTrainer(model=model, args=args, train_dataset=rows,
                                   data_collator=SFTCollator(processor, packing=False))
    trainer.train()
    (out / f"routing_rank{rank}.json").write_text(json.dumps(routing))
    if rank == 0:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (out / "losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
