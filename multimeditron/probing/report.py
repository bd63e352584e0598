"""Writing a probe result dict: JSON (everything), CSV (one row per expert x protocol x split x metric, and per label
for multi-label runs) and the markdown tables (one row per expert x protocol; per label; the paired comparisons;
the files left out). Plain functions of the dict, for any caller (`probe`, `finetune`)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from multimeditron.probing.metrics import METRICS

TABLE_METRICS = ("auroc", "aupr", "accuracy", "balanced_accuracy", "f1_macro", "kappa")
HEADERS = {"auroc": "AUROC", "aupr": "AUPR", "accuracy": "acc.", "balanced_accuracy": "bal. acc.",
           "f1_macro": "F1 (macro)", "kappa": "kappa"}


def format_metric(entry: Any) -> str:
    """0.912 [0.880, 0.940] (bootstrap interval), 0.81 ± 0.05 (spread over draws), or the undefined reason."""
    if not isinstance(entry, dict):
        entry = {"value": entry}
    value = entry.get("value")
    if isinstance(value, str) or value is None:
        return str(value)
    text = f"{value:.3f}"
    if "low" in entry:
        text += f" [{entry['low']:.3f}, {entry['high']:.3f}]"
    elif "std" in entry:
        text += f" ± {entry['std']:.3f}"
    return text


def _chosen(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in chosen.items() if k not in ("epochs", "shots", "draws"))


def markdown_table(result: dict[str, Any], metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """One row per expert x protocol with the test metrics (and their intervals)."""
    lines = ["| expert | protocol | chosen on val | " + " | ".join(HEADERS[m] for m in metrics) + " |",
             "|" + "---|" * (3 + len(metrics))]
    for run in result["runs"]:
        test = run["test"]
        if run["protocol"] == "fewshot":
            per_shot = run["details"]["per_shot"][str(run["chosen"]["reported_shots"])]
            cells = [format_metric(per_shot[m]) for m in metrics]
        else:
            cells = [format_metric(test[m]) for m in metrics]
        lines.append(f"| {run['expert']} | {run['protocol']} | {_chosen(run['chosen'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PER_LABEL_METRICS = ("auroc", "aupr", "balanced_accuracy", "f1_macro")


def per_label_table(result: dict[str, Any], metrics: tuple[str, ...] = PER_LABEL_METRICS) -> str:
    """Multi-label runs: one row per expert x protocol x label with its test metrics (and intervals)."""
    rows = [run for run in result["runs"] if run.get("per_label")]
    if not rows:
        return ""
    lines = ["| expert | protocol | label | positives / n | " + " | ".join(HEADERS[m] for m in metrics) + " |",
             "|" + "---|" * (4 + len(metrics))]
    for run in rows:
        for label, entry in run["per_label"].items():
            cells = [format_metric(entry[m]) for m in metrics]
            lines.append(f"| {run['expert']} | {run['protocol']} | {label} | {entry['positives']} / {entry['n']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def refused_table(result: dict[str, Any]) -> str:
    """The files left out under `data.on_bad_image: skip`, one row each."""
    refused = result.get("refused") or []
    if not refused:
        return ""
    lines = [f"Left out {len(refused)} unreadable file(s) (data.on_bad_image: skip):", "",
             "| split | file | reason |", "|---|---|---|"]
    lines += [f"| {r['split']} | {r['file']} | {r['reason']}{': ' + r['detail'] if r.get('detail') else ''} |"
              for r in refused]
    return "\n".join(lines)


def comparison_table(result: dict[str, Any]) -> str:
    """Paired bootstrap differences (a - b) with their interval and p-value."""
    if not result.get("comparisons"):
        return ""
    lines = ["| protocol | a | b | metric | a - b [95% CI] | p |", "|---|---|---|---|---|---|"]
    for comparison in result["comparisons"]:
        for metric, entry in comparison["metrics"].items():
            if isinstance(entry.get("difference"), str):
                diff, p = entry["difference"], ""
            else:
                diff = f"{entry['difference']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]"
                p = f"{entry['p_value']:.3f}"
            lines.append(f"| {comparison['protocol']} | {comparison['a']} | {comparison['b']} | {metric} | {diff} "
                         f"| {p} |")
    return "\n".join(lines)


CSV_FIELDS = ["expert", "protocol", "split", "metric", "value", "low", "high", "std", "chosen", "label"]


def paper_metric_values(run: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(split, `SET:metric` or `SET:metric[class]`, value) for every number of a run's paper metric sets (the
    bootstrap resamples themselves stay in results.json)."""
    out = []
    for split, sets in run.get("paper_metrics", {}).items():
        for entry in sets:
            for metric, value in entry["metrics"].items():
                if metric == "bootstrap_aurocs":
                    continue
                if isinstance(value, dict):
                    for cls, item in value.items():
                        out.append((split, f"{entry['set']}:{metric}[{cls}]",
                                    item["value"] if isinstance(item, dict) else item))
                else:
                    out.append((split, f"{entry['set']}:{metric}", value))
    return out


def paper_metrics_table(result: dict[str, Any]) -> str:
    """The paper metric sets' test numbers, one row per expert x protocol x number, the definition named once."""
    lines, definitions = [], {}
    for run in result["runs"]:
        for split, sets in run.get("paper_metrics", {}).items():
            for entry in sets:
                definitions[entry["set"]] = entry["definition"]
        for split, metric, value in paper_metric_values(run):
            if split == "test":
                lines.append(f"| {run['expert']} | {run['protocol']} | {metric} | {format_metric(value)} |")
    if not lines:
        return ""
    head = ["| expert | protocol | paper metric (test) | value |", "|---|---|---|---|"]
    notes = [f"- `{name}`: {text}" for name, text in definitions.items()]
    return "\n".join(head + lines + [""] + notes)


def wilcoxon_table(result: dict[str, Any]) -> str:
    if not result.get("wilcoxon"):
        return ""
    lines = ["| protocol | a | b | class | median AUROC a | median AUROC b | Wilcoxon p |", "|---|---|---|---|---|---|---|"]
    for comparison in result["wilcoxon"]:
        for cls, entry in comparison["per_class"].items():
            lines.append(f"| {comparison['protocol']} | {comparison['a']} | {comparison['b']} | {cls} | "
                         f"{entry['median_a']:.3f} | {entry['median_b']:.3f} | {entry['p_value']:.3g} |")
    return "\n".join(lines)


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per expert x protocol x split x metric; multi-label runs add a row per label (`label`: its name;
    empty on the rows of the means over labels)."""
    rows = []

    def row(run: dict[str, Any], split: str, metric: str, entry: Any, label: str = "") -> dict[str, Any]:
        entry = entry if isinstance(entry, dict) else {"value": entry}
        return {"expert": run["expert"], "protocol": run["protocol"], "split": split, "metric": metric,
                "value": entry.get("value"), "low": entry.get("low", ""), "high": entry.get("high", ""),
                "std": entry.get("std", ""), "chosen": json.dumps(run["chosen"], sort_keys=True), "label": label}

    for run in result["runs"]:
        rows += [row(run, split, metric, value) for split, metric, value in paper_metric_values(run)]
        for split in ("val", "test"):
            rows += [row(run, split, metric, run[split][metric]) for metric in METRICS if metric in run[split]]
        for label, entry in (run.get("per_label") or {}).items():
            rows += [row(run, "test", metric, entry[metric], label) for metric in METRICS if metric in entry]
    return rows


def write_reports(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """results.json, results.csv and results.md under `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(result))
    parts = [markdown_table(result), per_label_table(result), comparison_table(result), paper_metrics_table(result),
             wilcoxon_table(result), refused_table(result)]
    paths["markdown"].write_text("\n\n".join(p for p in parts if p) + "\n")
    return paths


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
