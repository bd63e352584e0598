"""ZeRO-3 on CPU with a learned top-1 router: ranks that route to different experts, and text-only batches beside
image batches, finish (no rank waits on a parameter gather the others skipped) and match one process's losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.zero3_worker import STEPS, main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

ZERO3_CPU = {
    "bf16": {"enabled": False}, "fp16": {"enabled": False},
    "zero_optimization": {"stage": 3, "overlap_comm": False},
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto", "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,
}


def run_worker(out: Path, launcher: list[str], deepspeed: Path | None = None) -> None:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    command = [*launcher, "tests.training.zero3_worker", str(out)] + ([str(deepspeed)] if deepspeed else [])
    # A rank left waiting on a gather hangs for ever: the timeout turns that into a failure.
    proc = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_zero3_routed_experts_and_text_only_batches_match_one_process(tmp_path):
    deepspeed = tmp_path / "zero3_cpu.json"
    deepspeed.write_text(json.dumps(ZERO3_CPU))
    (tmp_path / "single").mkdir()
    main(tmp_path / "single", None)  # the one-process reference, in this process (no second start-up)
    run_worker(tmp_path / "zero3", [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                    "--master-port", str(27500 + os.getpid() % 1000), "-m"], deepspeed)
    ranks = [json.loads((tmp_path / "zero3" / f"routing_rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(STEPS)
    # the situations under test happened: expert 1 idle on rank 0 only, then a text-only batch on each rank in turn
    assert ranks[0][0]["experts"] == [True, False] and ranks[1][0]["experts"] == [False, True]
    assert ranks[0][1]["experts"] == [False, False] and ranks[1][1]["experts"] == [True, True]
    assert ranks[0][2]["experts"] == [True, True] and ranks[1][2]["experts"] == [False, False]
    single = json.loads((tmp_path / "single" / "losses.json").read_text())
    zero3 = json.loads((tmp_path / "zero3" / "losses.json").read_text())
    assert len(single) == len(STEPS)
    assert zero3 == pytest.approx(single, rel=2e-3), (zero3, single)
