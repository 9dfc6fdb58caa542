"""Tables in reports/ come from runs: a real (tiny) sweep, grouped and rendered."""

from __future__ import annotations

import csv

import pytest

from bnnbench.report.__main__ import list_tables, main, sweep_keys
from bnnbench.report.collect import normalize_value, parse_overrides, row_key
from tests.conftest import CONF, FAST


def test_every_sweep_file_is_a_table():
    assert list_tables() == sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
    assert sweep_keys("tang_table2") == ["optimizer.lr", "method.activation"]
    assert sweep_keys("methods") == ["method"]


def test_override_normalization_matches_published_keys():
    assert normalize_value("1e-2") == normalize_value("0.01") == "0.01"
    assert normalize_value("True") == "true"
    settings = parse_overrides(["+method=tang", "optimizer.lr=1e-4", "method.activation=prelu"])
    assert row_key(settings, ["optimizer.lr", "method.activation"]) == \
        "optimizer.lr=0.0001 method.activation=prelu"


def test_report_runs_the_sweep_and_writes_the_table(tmp_path):
    main(["tang_table5", "--run", "--runs-root", str(tmp_path / "multirun"),
          "--out", str(tmp_path / "reports"), "--", *FAST, "seed=0,1"])
    text = (tmp_path / "reports" / "tang_table5.md").read_text()
    # the paper's claim, tested on these runs: our difference over 2 seeds vs the paper's +6.5
    claim = next(line for line in text.splitlines() if line.startswith("| m = 2 > m = 1"))
    assert "(n = 2)" in claim and "| +6.5 |" in claim
    assert any(v in claim for v in ("| reproduced |", "| not reproduced |", "| inconclusive"))
    assert "python -m bnnbench.report tang_table5 --run" in text
    assert "mnist5k" in text and "epochs: 1" in text
    with open(tmp_path / "reports" / "tang_table5.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["setting"] for r in rows] == ["method.activation_bits=1", "method.activation_bits=2"]
    assert [r["seeds"] for r in rows] == ["0,1", "0,1"]
    assert [r["paper top-1"] for r in rows] == ["39.3", "45.8"]  # Tang Table 5, from the CSV
    assert all(0 <= float(r["top-1 (%)"].split(" ± ")[0]) <= 100 for r in rows)


def test_unknown_table_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["nosuch"])
    err = capsys.readouterr().err
    assert "unknown table 'nosuch'" in err and "methods" in err
