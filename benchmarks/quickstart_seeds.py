"""How much the quickstart's result depends on the seed: runs it for several seeds (one process each, one thread
each, `--jobs` at a time) and prints held-out accuracy per question type and seed beside chance, with min / median /
max, and whether each run meets the quickstart's bar (every image-dependent type at least halfway from chance to
100%, presence at least 90%).

    python benchmarks/quickstart_seeds.py --seeds 0 1 2 3 4 --jobs 2 --out runs/quickstart_seeds
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRESENCE_BAR = 90.0


def run_seed(seed: int, out: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(out / f"seed_{seed}.log", "w")
    command = [sys.executable, "-m", "multimeditron", "quickstart", "--out", str(out / f"seed_{seed}"),
               "--seed", str(seed), *extra]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def meets_bar(metrics: dict) -> bool:
    for qtype, row in metrics["per_type"].items():
        halfway = row["chance"] + (100.0 - row["chance"]) / 2
        if row["accuracy"] < halfway or (qtype == "presence" and row["accuracy"] < PRESENCE_BAR):
            return False
    return True


def table(results: dict[int, dict]) -> str:
    seeds = sorted(results)
    types = sorted(next(iter(results.values()))["per_type"])
    head = ["question type", "chance %", *(f"seed {s}" for s in seeds), "min", "median", "max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for qtype in types:
        values = [results[s]["per_type"][qtype]["accuracy"] for s in seeds]
        chance = results[seeds[0]]["per_type"][qtype]["chance"]
        cells = [qtype, f"{chance:.1f}", *(f"{v:.1f}" for v in values),
                 f"{min(values):.1f}", f"{statistics.median(values):.1f}", f"{max(values):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| meets the bar | | " + " | ".join("yes" if meets_bar(results[s]) else "no" for s in seeds)
                 + " | | | |")
    lines.append("| minutes | | " + " | ".join(f"{results[s]['seconds'] / 60:.1f}" for s in seeds) + " | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart_seeds"))
    parser.add_argument("quickstart_args", nargs=argparse.REMAINDER,
                        help="after `--`: passed to every quickstart (e.g. -- --num-train 1200)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    extra = [a for a in args.quickstart_args if a != "--"]
    pending, running, results = list(args.seeds), {}, {}
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            running[seed] = run_seed(seed, args.out, extra)
        for seed, process in list(running.items()):
            if process.poll() is None:
                continue
            del running[seed]
            metrics_file = args.out / f"seed_{seed}" / "metrics.json"
            if process.returncode != 0 or not metrics_file.is_file():
                raise SystemExit(f"seed {seed} failed (exit {process.returncode}); see {args.out}/seed_{seed}.log")
            results[seed] = json.loads(metrics_file.read_text())
            print(f"seed {seed}: done ({results[seed]['seconds'] / 60:.1f} min)", flush=True)
        time.sleep(2)
    print(f"\n{len(results)} seeds, {args.jobs} at a time, {(time.perf_counter() - started) / 60:.1f} min in all\n")
    print(table(results))
    (args.out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
