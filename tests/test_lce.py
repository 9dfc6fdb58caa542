"""The Larq Compute Engine comparison, bnnbench's side (CI has no LCE environment).

The exported arrays are run through a numpy forward written here from the op definitions in
``bnnbench.bench.lce``'s docstring (not from its code), against the torch network and the
packed model: if the export maps a layer wrong, the LCE side gets a different network.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from bnnbench.bench import GEOMETRY, composed, trained_like_batchnorm
from bnnbench.bench import lce as L
from bnnbench.packed.format import load_packed, save_packed
from bnnbench.spec import build_net

SMALL_MLP = ["+method=bnn", "model=mlp", "model.hidden_features=64"]


@pytest.fixture(scope="module")
def small_net():
    cfg = composed(SMALL_MLP)
    return cfg, trained_like_batchnorm(build_net(cfg, GEOMETRY)).eval()


def numpy_forward(plan: list[dict], arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The ops as the docstring defines them, in float64."""
    x = x.reshape(len(x), -1).astype(np.float64)
    for op in plan:
        if op["op"] == "dense":
            x = x @ arrays[op["weight"]].astype(np.float64).T
        elif op["op"] == "binary_dense":
            x = np.where(x >= 0, 1.0, -1.0) @ arrays[op["signs"]].astype(np.float64).T
        elif op["op"] == "batchnorm":
            a = {k: arrays[op[k]].astype(np.float64) for k in ("gamma", "beta", "mean", "var")}
            x = (x - a["mean"]) / np.sqrt(a["var"] + op["eps"]) * a["gamma"] + a["beta"]
        elif op["op"] == "htanh":
            x = np.clip(x, -1, 1)
        if "bias" in op:
            x = x + arrays[op["bias"]]
    return x


def test_plan_is_binarynets_layer_order(small_net):
    _, net = small_net
    plan, arrays = L.larq_plan(net)
    assert [op["op"] for op in plan] == [
        "dense", "batchnorm", "htanh",            # float first layer, BN, htanh
        "binary_dense", "batchnorm", "htanh",     # sign x sign 64 -> 64
        "binary_dense", "batchnorm", "htanh",
        "dense", "batchnorm"]                     # float last layer (real input), output BN
    signs = [arrays[op["signs"]] for op in plan if op["op"] == "binary_dense"]
    assert all(s.dtype == np.int8 and s.shape == (64, 64) and set(np.unique(s)) <= {-1, 1}
               for s in signs)
    assert arrays[plan[0]["weight"]].shape == (64, 784)
    assert all(op["eps"] == 1e-5 for op in plan if op["op"] == "batchnorm")


def test_exported_arrays_compute_the_network_and_the_packed_model(small_net, tmp_path):
    cfg, net = small_net
    plan, arrays = L.larq_plan(net)
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    ours = numpy_forward(plan, arrays, x.numpy())
    with torch.no_grad():
        torch_out = net(x).double().numpy()
        packed = load_packed(save_packed(net, tmp_path / "m.safetensors", cfg, GEOMETRY))
        packed_out = packed(x).double().numpy()
    np.testing.assert_allclose(ours, torch_out, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours, packed_out, atol=1e-4, rtol=1e-4)
    assert (ours.argmax(-1) == packed_out.argmax(-1)).all()


def test_export_writes_the_request_the_lce_script_reads(small_net, tmp_path):
    _, net = small_net
    inputs = {1: torch.randn(1, 1, 28, 28), 3: torch.randn(3, 1, 28, 28)}
    layer_inputs = {2: torch.randn(2, 64)}
    L.export(net, tmp_path, inputs, layer_inputs, repeats=4)
    request = json.loads((tmp_path / "request.json").read_text())
    arrays = np.load(tmp_path / "weights.npz")
    assert request["threads"] == [1, 2] and request["repeats"] == 4
    mlp, layer = request["models"]["mlp"], request["models"]["layer"]
    assert [op["op"] for op in layer["plan"]] == ["binary_dense"]
    assert layer["plan"][0] == next(op for op in mlp["plan"] if op["op"] == "binary_dense")
    assert arrays[mlp["inputs"]["3"]].shape == (3, 784)
    np.testing.assert_array_equal(arrays[mlp["inputs"]["1"]], inputs[1].reshape(1, 784).numpy())
    assert arrays[layer["inputs"]["2"]].shape == (2, 64)
    for op in mlp["plan"]:  # every array a op names is in the file
        assert all(arrays[v].size for k, v in op.items() if k not in ("op", "eps"))


@pytest.mark.parametrize("net, message", [
    (torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval(),
     r"layer 1 \(ReLU\) has no Larq counterpart"),
    (torch.nn.Sequential(torch.nn.Linear(4, 4)), r"eval mode; call \.eval\(\)"),
    (torch.nn.Linear(4, 4).eval(), r"maps a Sequential MLP, got Linear"),
])
def test_a_network_it_cannot_map_is_one_line(net, message):
    with pytest.raises(L.BnnbenchError, match=message):
        L.larq_plan(net)


def test_skipped_in_one_line_without_an_lce_python(tmp_path, monkeypatch):
    monkeypatch.delenv(L.ENV_VAR, raising=False)
    assert L.section(None, 1, tmp_path) == [L.SKIP_NO_PYTHON]
    missing = str(tmp_path / "nope" / "python")
    (line,) = L.section(missing, 1, tmp_path)
    assert line == f"LCE comparison: skipped ({missing} cannot run LCE: {missing}: no such file)"


def test_skipped_in_one_line_when_that_python_lacks_lce(tmp_path, monkeypatch):
    pytest.importorskip("numpy")
    try:
        import tensorflow  # noqa: F401
        pytest.skip("this environment has tensorflow")
    except ImportError:
        pass
    monkeypatch.setenv(L.ENV_VAR, sys.executable)  # bnnbench's own python: no tensorflow
    (line,) = L.section(None, 1, tmp_path)
    assert line.startswith(f"LCE comparison: skipped ({sys.executable} cannot run LCE: ")
    assert "No module named" in line


LOGITS = np.array([[2.0, -1.0, 0.5], [-0.3, 0.1, 0.0]], np.float32)
ROWS_40 = np.tile(LOGITS, (20, 1))  # 40 rows: 5% lets 2 of them differ by more than the atol


def _bump(a: np.ndarray, rows: list[int], by: float = 0.4) -> np.ndarray:
    b = a.copy()
    b[rows, 2] += by  # the last logit: never the argmax after +0.4 in row 0, is in row 1
    return b


@pytest.mark.parametrize("ours, theirs, exact, ok, words", [
    (LOGITS, LOGITS + 1e-5, False, True,
     "logits within 0.001 in 2 of 2 rows (max |d| 1.0e-05), classes equal in 2 of 2"),
    (LOGITS, _bump(LOGITS, [0]), False, False, "in 1 of 2 rows (max |d| 4.0e-01)"),
    (LOGITS, LOGITS[:, [1, 0, 2]], False, False, "classes equal in 0 of 2 (DIFFER)"),
    (LOGITS, LOGITS[:1], False, False, "shapes differ"),
    (ROWS_40, _bump(ROWS_40, [0, 2]), False, True, "in 38 of 40 rows"),
    (ROWS_40, _bump(ROWS_40, [0, 2, 4]), False, False, "in 37 of 40 rows"),
    (ROWS_40, _bump(ROWS_40, [1]), False, True, "in 39 of 40 rows (max |d| 4.0e-01), "
                                                "classes equal in 39 of 40"),
    (ROWS_40, _bump(ROWS_40, [1, 3, 5]), False, False, "classes equal in 37 of 40 (DIFFER)"),
    (LOGITS, LOGITS.copy(), True, True, "equal"),
    (LOGITS, LOGITS + np.array([[0, 0, 0], [0, 2, 0]], np.float32), True, False,
     "1 values differ"),
])
def test_agreement_fails_on_a_wrong_logit(ours, theirs, exact, ok, words):
    got_ok, text = L.agreement(ours, theirs, exact)
    assert got_ok is ok and words in text


def _lce_result(ms: float) -> dict:
    return {"versions": {}, "ops": {}, "rows": [
        {"model": "mlp", "binary_as": b, "batch": 4, "threads": 1, "variant": v, "ms": ms * f}
        for b in ("bconv", "quantdense") for v, f in (("bgemm", 2.0), ("indirect bgemm", 1.0))]}


@pytest.mark.parametrize("shift, speed", [(0.0, "3.00x"), (0.5, "- (outputs differ)")])
def test_rows_give_no_speedup_when_any_lce_output_differs(shift, speed):
    ours = {("mlp", 4): LOGITS}
    lce_out = {"mlp|bconv|4|bgemm": LOGITS.copy(), "mlp|quantdense|4|bgemm": LOGITS + shift}
    (row,) = L.table_rows({("mlp", 4, 1): 2.0}, ours, _lce_result(6.0), lce_out)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == [L.MODEL_LABELS["mlp"], "4", "1", "2.000", "6.000 (indirect bgemm)"]
    assert cells[5] == speed


def test_packed_inference_report_has_the_lce_section_or_its_skip_line(tmp_path, monkeypatch):
    from bnnbench.bench import packed_inference as P

    monkeypatch.delenv(L.ENV_VAR, raising=False)
    monkeypatch.setattr(P, "CASES", (("mlp 3x64", "bnn", ["model=mlp", "model.hidden_features=64"],
                                      (1,), GEOMETRY),))
    monkeypatch.setattr(P, "memory_rows", lambda workdir: [])
    monkeypatch.setattr(P, "gpu_lines", lambda workdir: ([], "none", []))
    P.main(["--repeats", "1", "--out", str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    section = text.split("## LCE comparison (CPU)\n", 1)[1].split("\n## ", 1)[0]
    assert section.strip().splitlines()[-1] == L.SKIP_NO_PYTHON
