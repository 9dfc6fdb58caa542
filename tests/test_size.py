"""Size accounting: hand arithmetic on small models, conventions, the CLI, and Tang's tables."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from bnnbench.errors import BnnbenchError
from bnnbench.nn.layers import QuantConv2d, QuantLinear
from bnnbench.nn.paper_quantizers import ABCActivationQuantizer, ScaledSignQuantizer
from bnnbench.nn.quantizers import SignQuantizer
from bnnbench.size import CONVENTIONS, MIB, Convention, account, get_convention
from tests.conftest import ROOT


def small_net() -> nn.Sequential:
    """3x8x8 input: FP conv (8x3x3x3 + 8) -> BN(8) -> binary conv 8->16 3x3 (+bias, sign x sign)
    -> BN(16) -> PReLU(16) -> flatten 16*4*4 -> XNOR-scaled binary linear 256->10 (+bias) with
    ABC-Net activation bases (2 shifts + 2 betas)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8),
        QuantConv2d(8, 16, 3, weight_quantizer=SignQuantizer(), input_quantizer=SignQuantizer()),
        nn.BatchNorm2d(16), nn.PReLU(16), nn.Flatten(),
        QuantLinear(256, 10, weight_quantizer=ScaledSignQuantizer(),
                    input_quantizer=ABCActivationQuantizer(2)),
    )


def test_deployed_counts_every_stored_bit():
    size = account(small_net(), "deployed", input_shape=(3, 8, 8))
    by_name = {r.name: r for r in size.layers}
    assert by_name["0"].bytes == (8 * 27 + 8) * 4                 # FP conv: weights + bias
    assert by_name["1"].bytes == 4 * 8 * 4                        # BN: weight, bias, mean, var
    assert by_name["2"].bytes == 16 * 72 // 8 + 16 * 4            # 1 bit/weight + bias
    assert by_name["3"].bytes == 4 * 16 * 4
    assert by_name["4"].bytes == 16 * 4                           # PReLU slopes
    assert by_name["6"].bytes == 2560 // 8 + 10 * 4 + 10 * 4      # bits + alpha/channel + bias
    assert by_name["6.input_quantizer"].bytes == 4 * 4            # 2 shifts + 2 betas
    assert size.total_bytes == 896 + 128 + 208 + 256 + 64 + 400 + 16 == 1968
    # the same tensors in float32, no scales
    assert size.fp32_bytes == 896 + 128 + (1152 + 16) * 4 + 256 + 64 + (2560 + 10) * 4 + 16
    assert size.compression == pytest.approx(size.fp32_bytes / 1968)
    assert by_name["2"].weight_bits == 1 and by_name["2"].input_bits == 1
    assert by_name["6"].weight_bits == 1 and by_name["6"].input_bits == 2
    # MACs per sample: conv 6x6x8 outputs x 27, conv 4x4x16 x 72, linear 10 x 256
    assert (size.macs, by_name["0"].macs, by_name["2"].macs, by_name["6"].macs) == (
        7776 + 18432 + 2560, 7776, 18432, 2560)
    assert size.binary_macs == size.xnor_macs == 18432 + 2560
    assert size.macs_by_bits == {"w32a32": 7776, "w1a1": 18432, "w1a2": 2560}
    data = size.to_dict()
    assert {"total_bytes", "fp32_bytes", "compression", "layers", "binary_mac_share"} <= set(data)


def test_bn_counters_and_buffers_are_conventions():
    net = small_net()
    base = account(net, "deployed").total_bytes
    no_stats = account(net, Convention("x", count_buffers=False)).total_bytes
    assert base - no_stats == (8 + 16) * 2 * 4                   # running mean + var
    no_bn = account(net, Convention("x", count_bn=False, count_buffers=False)).total_bytes
    assert no_stats - no_bn == (8 + 16) * 2 * 4
    no_other = account(net, Convention("x", count_other=False)).total_bytes
    assert base - no_other == 16 * 4 + 4 * 4                      # PReLU + activation bases
    no_bias = account(net, Convention("x", count_bias=False)).total_bytes
    assert base - no_bias == (8 + 16 + 10) * 4


def test_tang_convention_by_hand():
    # first layer FP (weights + bias); binary layer 1 bit + 1 float/out-channel; binary last
    # layer 1 bit only; nothing else
    size = account(small_net(), "tang2017")
    assert size.total_bytes == 896 + (144 + 16 * 4) + 320
    two = account(small_net(), dataclasses.replace(CONVENTIONS["tang2017"], floats_per_channel=2))
    assert two.total_bytes == size.total_bytes + 16 * 4
    # rules on an unconverted float model give the same as reading the converted one
    float_net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 3),
                              nn.BatchNorm2d(16), nn.PReLU(16), nn.Flatten(), nn.Linear(256, 10))
    assert account(float_net, "tang2017").total_bytes == size.total_bytes
    by_layers = dataclasses.replace(CONVENTIONS["tang2017"], full_precision=None)
    assert account(small_net(), by_layers).total_bytes == size.total_bytes
    fp32 = account(float_net, "fp32")
    assert fp32.total_bytes == 4 * sum(p.numel() for p in float_net.parameters())
    assert fp32.compression == 1


def test_bad_conventions_are_one_line():
    with pytest.raises(BnnbenchError, match="size.convention='nosuch'"):
        get_convention("nosuch")
    with pytest.raises(BnnbenchError, match="unknown rule 'middle'"):
        get_convention("deployed", full_precision=["middle"])
    with pytest.raises(BnnbenchError, match="floats_per_channel"):
        get_convention("tang2017", floats_per_channel=-1)
    assert get_convention("tang2017", full_precision="layers").full_precision is None


def test_method_converted_model_reads_precision():
    from bnnbench.methods import create_method
    from bnnbench.models import create_model

    net = create_method("bnn").convert(
        create_model("mlp", in_chans=1, num_classes=10, img_size=28, hidden_features=64, depth=2))
    size = account(net, "deployed", input_shape=(1, 28, 28))
    # 784x64 FP + 64x64 binary (no bias, BinaryNet has no scale) + 64x10 FP; BN 4 floats each
    assert size.total_bytes == 784 * 64 * 4 + 64 * 64 // 8 + 64 * 10 * 4 + (64 * 2 + 10) * 16
    assert size.binary_macs == 64 * 64


def test_size_cli_writes_size_json(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-m", "bnnbench.size", "+method=bnn", "model.hidden_features=64",
         f"out={out}", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / "size.json").read_text())
    assert data["method"] == "bnn" and data["model"] == "mlp"
    # 784x64 FP, two 64x64 binary (1 bit, no bias, no scale), 64x10 FP, 4 BatchNorms (4 floats)
    assert data["total_bytes"] == 784 * 64 * 4 + 2 * 64 * 64 // 8 + 64 * 10 * 4 + (3 * 64 + 10) * 16
    assert data["compression"] == pytest.approx(data["fp32_bytes"] / data["total_bytes"])
    assert [r["name"] for r in data["layers"]][:2] == ["2", "3"]
    assert "QuantLinear" in proc.stdout and "compression" in proc.stdout


def test_size_table_as_csv_and_latex():
    """The per-layer table in the formats papers paste: every number is the accounting's, and
    the hand arithmetic of small_net() (see test_deployed_counts_every_stored_bit) adds up."""
    import csv
    import io

    from bnnbench.size import render_csv, render_latex

    size = account(small_net(), "deployed", input_shape=(3, 8, 8))
    rows = list(csv.DictReader(io.StringIO(render_csv(size))))
    assert [r["layer"] for r in rows] == [r.name for r in size.layers] + ["total"]
    by_name = {r["layer"]: r for r in rows}
    assert int(by_name["0"]["bytes"]) == (8 * 27 + 8) * 4 and by_name["0"]["weight_bits"] == "32"
    assert int(by_name["2"]["bytes"]) == 16 * 72 // 8 + 16 * 4 and by_name["2"]["input_bits"] == "1"
    assert int(by_name["2"]["macs"]) == 16 * 72 * 4 * 4 and by_name["1"]["macs"] == ""
    assert sum(int(r["bytes"]) for r in rows[:-1]) == int(by_name["total"]["bytes"])
    assert int(by_name["total"]["bytes"]) == size.total_bytes
    latex = render_latex(size, "small_net")
    body = latex[latex.index(r"\midrule"):].splitlines()
    assert latex.splitlines()[2].startswith(r"\begin{tabular}{lllrrrrr}")
    assert body[-1] == r"\end{tabular}" and body[-2] == r"\bottomrule"
    total = body[-3].removesuffix(r" \\").split(" & ")
    assert total[0] == "total" and total[6] == f"{size.total_bytes:,}".replace(",", "{,}")
    assert all(len(line.split(" & ")) == 8 for line in body if line.endswith(r"\\"))


@pytest.mark.parametrize("table_format, file_name", [("csv", "size.csv"), ("latex", "size.tex")])
def test_size_cli_format_writes_the_table(tmp_path, table_format, file_name):
    """format=csv|latex: stdout is the table alone (pipeable) and the same text lands beside
    size.json; its total is size.json's."""
    proc = subprocess.run(
        [sys.executable, "-m", "bnnbench.size", "model.hidden_features=32",
         f"format={table_format}", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "run" / file_name).read_text()
    assert proc.stdout == table and "wrote" in proc.stderr
    total_bytes = json.loads((tmp_path / "run" / "size.json").read_text())["total_bytes"]
    last = table.splitlines()[-1] if table_format == "csv" else table.splitlines()[-3]
    assert last.startswith("total") and str(total_bytes) in last.replace("{,}", "")


def test_size_claims_no_run_directory(tmp_path):
    """size composes a training run's config but trains nothing: no runs/, no .hydra/, no run
    marker, no log; its files go to hydra.run.dir (default: the current directory), and a second
    call's go beside the first's instead of replacing them."""
    for table_format in ("csv", "table"):
        proc = subprocess.run(
            [sys.executable, "-m", "bnnbench.size", "model.hidden_features=32",
             f"format={table_format}"], cwd=tmp_path, text=True, capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["size-1.json", "size.csv", "size.json"]
    first, second = (json.loads((tmp_path / n).read_text()) for n in ("size.json", "size-1.json"))
    assert first["total_bytes"] == second["total_bytes"] > 0


def test_hydra_settings_of_a_run_are_not_sizes():
    """conf/hydra/default.yaml (runs/ and the callbacks that claim a run directory) reaches a
    training run's config; conf/size.yaml, which includes that config, replaces it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    composed = {}
    for name in ("config", "size"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed[name] = compose(name, return_hydra_config=True).hydra
    GlobalHydra.instance().clear()
    run, size = composed["config"], composed["size"]
    assert run.callbacks.guard_run_dir._target_ == "bnnbench.rundir.GuardRunDir"
    assert set(run.callbacks) == {"create_output_dir", "sweep_outcome", "guard_run_dir",
                                  "render_report"}
    assert "/runs/" in run.run.dir and run.output_subdir is None  # under paths.log_dir
    # size claims no run directory: only the one-line check that hydra.run.dir can be made
    assert set(size.callbacks) == {"create_output_dir"}
    assert size.run.dir == "." and size.output_subdir is None


def test_cli_errors_are_one_line(capsys):
    from bnnbench.errors import call_or_exit

    def fails() -> None:
        try:
            get_convention("nosuch")
        except BnnbenchError as err:  # as hydra.instantiate wraps a target's error
            raise RuntimeError("wrapped") from err

    with pytest.raises(SystemExit) as exc:
        call_or_exit(fails)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "size.convention='nosuch'" in err
    with pytest.raises(KeyError):  # anything else is a bug: keep the traceback
        call_or_exit(lambda: {}["x"])


@pytest.mark.parametrize("field, value, message", [
    ("full_precision", 123, "size.full_precision=123 is not valid: need a list of first"),
    ("count_bn", "maybe", "size.count_bn='maybe' is not valid: need true or false"),
    ("weight_bits", True, "size.weight_bits=True is out of range"),
    ("weight_bits", 99, "size.weight_bits=99 is out of range: need an integer in [1, 32]"),
])
def test_bad_convention_fields_are_one_line(capsys, field, value, message):
    """``bnnbench size size.<field>=<value>``: what the command line can type, each one line
    (size.full_precision=123 and size.count_bn=maybe were a TypeError and a silent true)."""
    from bnnbench.errors import call_or_exit

    with pytest.raises(SystemExit) as exc:
        call_or_exit(get_convention, "deployed", **{field: value})
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_a_path_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """out= under a file (or a read-only hydra.run.dir): one line naming the path and the
    reason, not a traceback; an OSError about no path at all stays a traceback (a bug)."""
    from bnnbench.errors import call_or_exit
    from bnnbench.size import output_path, write_json

    (tmp_path / "a_file").write_text("")
    size = account(small_net(), "deployed")
    with pytest.raises(SystemExit) as exc:
        call_or_exit(lambda: write_json(size, output_path(tmp_path / "a_file" / "sizes")))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'a_file' / 'sizes'}: Not a directory" in err
    with pytest.raises(OSError, match="boom"):
        call_or_exit(lambda: (_ for _ in ()).throw(OSError("boom")))


# ---------------------------------------------------------------------------------- Tang
def test_tang_tables_reproduce_every_printed_number(tmp_path):
    from bnnbench.report import tang_size

    results = tang_size.compute()
    assert len(results) == 23
    bad = {f"T{r.row.table} {r.row.row}": r.checks for r in results if not r.ok}
    assert not bad
    by_row = {(r.row.table, r.row.row): r for r in results}
    # the arithmetic of reference/paper-tables.md, exactly
    alex = by_row[("6", "Our method AlexNet")]
    assert alex.before_mib == pytest.approx(60_965_224 * 4 / MIB)
    assert round(alex.after_mib, 2) == 7.43
    assert round(by_row[("6", "BNN AlexNet")].after_mib, 2) == 22.57
    assert round(by_row[("6", "Our method NIN-net")].after_mib, 3) == 1.228
    assert round(by_row[("6", "XNOR-net ResNet-18")].after_mib, 3) == 3.341
    assert round(by_row[("6", "XNOR-net ResNet-18")].before_mib, 2) == 44.59
    assert str(alex.ratio) == "31.2" and str(by_row[("6", "Our method NIN-net")].ratio_alexnet) \
        == "189"
    assert by_row[("6", "Our method NIN-net")].checks["size before"] == "match"  # 28.97 -> 29
    assert by_row[("6", "BNN AlexNet")].checks["size before"] == "match (truncated)"
    for key, ratio in ((("2", "BNN lr 0.01 ReLU"), "6.02"), (("2", "BNN lr 0.0001 PReLU"), "5.98"),
                       (("3", "BNN last Binary scale"), "27.1")):
        assert str(by_row[key].ratio) == ratio
    tang_size.main(["--out", str(tmp_path), "--no-deployed"])
    text = (tmp_path / "tang_sizes.md").read_text()
    assert "python -m bnnbench.report.tang_size" in text and "23 of 23 rows" in text
    assert (tmp_path / "tang_sizes.csv").read_text().count("\n") == 25


def test_paper_rounding_rules():
    from bnnbench.report.tang_size import compare, sig_digits

    assert [sig_digits(s) for s in ("22.6", "29", "70", "189", "1", "0.5", "7.40")] == \
        [3, 2, 1, 3, 1, 1, 3]
    assert compare(69.46, "70") == "match"
    assert compare(232.56, "232") == "match (truncated)"
    assert compare(22.57, "22.6") == "match" and compare(22.57, "22.5") == "match (truncated)"
    assert compare(13.35, "13.3") == "match (truncated)" and compare(13.2, "13.4") == "MISMATCH"


def test_shipped_report_is_current():
    md = ROOT / "reports" / "tang_sizes.md"
    assert md.exists(), "run python -m bnnbench.report.tang_size"
    text = md.read_text()
    assert "23 of 23 rows reproduce every printed number" in text
    assert Path(ROOT / "reports" / "reference" / "tang2017.csv").exists()
