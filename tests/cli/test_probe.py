"""`multimeditron probe` end to end: three expert families, every protocol, one image folder, the printed table."""
from __future__ import annotations

import json

from multimeditron.cli import main
from tests.probing.conftest import write_folder


def test_probe_three_families_every_protocol(tmp_path, capsys):
    data = write_folder(tmp_path / "images", {"train": 16, "test": 12})  # no val: carved from train
    out = tmp_path / "out"
    argv = ["probe", "--expert", "retfound_green", "--expert", "mermed_fm", "--expert", "timm:vit_small_patch16_224",
            "--tiny", "--data", str(data), "--protocol", "all", "--out", str(out), "--bootstrap", "200",
            "--linear-epochs", "20", "--shots", "2,8", "--draws", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no val split: carved" in printed
    assert "| expert | protocol | chosen on val | AUROC |" in printed
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 3 * 4
    for run in result["runs"]:
        value = run["test"]["auroc"]
        value = value["value"] if isinstance(value, dict) else value
        assert value > 0.95, (run["expert"], run["protocol"], value)
        if run["protocol"] != "fewshot":
            entry = run["test"]["auroc"]
            assert entry["low"] <= entry["value"] <= entry["high"]
            assert (out / "plots" / f"{run['expert'].replace(':', '_')}_{run['protocol']}_roc.png").is_file()
    assert {c["protocol"] for c in result["comparisons"]} == {"knn", "linear", "logreg"}
    assert (out / "results.csv").read_text().startswith("expert,protocol,split,metric,value")
    assert "embeddings: 9 splits computed, 0 from the cache" in printed

    # the same --out again: refused, then replaced with --overwrite, which keeps the embedding cache
    assert main([*argv[:-10], "--protocol", "knn", "--out", str(out), "--bootstrap", "0"]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert main([*argv[:-10], "--protocol", "knn", "--out", str(out), "--bootstrap", "0", "--overwrite"]) == 0
    assert "embeddings: 0 splits computed, 9 from the cache" in capsys.readouterr().out


def test_probe_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["probe", "--expert", "retfound_green", "--tiny", "--data", str(tmp_path / "missing")]) == 2
    assert "error: no such data" in capsys.readouterr().err
    assert main(["probe", "--expert", "retfound_green", "--tiny", "--data", str(tmp_path), "--protocol", "svm"]) == 2
    assert "error: probe.protocols[0] (--protocol): 'svm' is not one of" in capsys.readouterr().err
    data = write_folder(tmp_path / "images", {"train": 2, "test": 2})
    assert main(["probe", "--expert", "retfound_gren", "--tiny", "--data", str(data)]) == 2
    assert "unknown expert id 'retfound_gren'" in capsys.readouterr().err


def test_multilabel_results_hold_every_label(tmp_path, capsys):
    """A label at chance hides in the mean AUROC: results.json/.csv/.md give each label's own metrics."""
    import csv

    from tests.probing.conftest import write_study_table

    table = write_study_table(tmp_path / "studies.parquet")
    out = tmp_path / "out"
    assert main(["probe", "--expert", "retfound_green", "--tiny", "--data", str(table), "--label-column", "effusion",
                 "--label-column", "nodule", "--protocol", "knn,logreg", "--bootstrap", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| expert | protocol | label | positives / n | AUROC |" in printed
    result = json.loads((out / "results.json").read_text())
    for run in result["runs"]:
        assert set(run["per_label"]) == {"effusion", "nodule"}
        assert run["per_label"]["nodule"]["positives"] == 1 and run["per_label"]["nodule"]["n"] == 3
        assert "value" in run["per_label"]["effusion"]["auroc"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["label"] for r in rows} == {"", "effusion", "nodule"}
    assert "| retfound_green | knn | nodule | 1 / 3 |" in (out / "results.md").read_text()
