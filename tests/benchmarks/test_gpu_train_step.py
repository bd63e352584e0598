"""`benchmarks/gpu_train_step.py --small`: the GPU benchmark's code runs on CPU, its packing equality checks pass
(sdpa and eager here) and it prints its table with every scenario."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_train_step.py"


def test_small_mode_runs_and_checks_packing(capsys):
    spec = importlib.util.spec_from_file_location("gpu_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--small"]) == 0  # 1 when a packed run differs from the separate runs
    out = capsys.readouterr().out
    assert "| sdpa | float32 |" in out and "| eager | float32 |" in out and "| NO |" not in out
    for row in ("| equal lengths, padded | llava |", "| equal lengths, padded | multimeditron |",
                "| variable-length mix | llava | sdpa, padded |",
                "| variable-length mix | multimeditron | sdpa, packed |",
                "| generation (KV cache) | multimeditron |"):
        assert row in out, row
