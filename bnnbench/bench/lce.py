"""bnnbench's packed BinaryNet beside the Larq Compute Engine (LCE) on this CPU.

The same BinaryNet MLP 784-4096x3-10 (``+method=bnn model=mlp model.hidden_features=4096``, the
packed-inference bench's "mlp 3x4096 (BinaryNet paper)" network, BatchNorm statistics from
``trained_like_batchnorm``) runs in both: bnnbench's packed model (``load_packed``) and LCE 0.16's
interpreter on the same network rebuilt in Larq from exported weights. Alone, its first binary
layer (4096 -> 4096, float input, sign, XNOR-popcount GEMM, float output) runs in both too.
Both get the same inputs; the outputs must agree (:func:`agreement`: the network's logits
close, the binary layer's integer outputs exactly), or the row says they differ and gives no
speedup.

LCE needs tensorflow-cpu 2.16 (with tf-keras 2.16) and numpy < 2 (README, "Against the Larq
Compute Engine"), so it lives in its own environment and runs as a separate process:
``bnnbench/bench/lce_larq.py`` (tensorflow, larq, numpy only) with that environment's python,
given by ``--lce-python`` or ``$BNNBENCH_LCE_PYTHON``. bnnbench never imports tensorflow.

Exchange, in a temporary directory: ``weights.npz`` (the network as arrays) and
``request.json`` (the ``plan``: the network's layers in order as ops naming those arrays;
batches, threads, repeats) from :func:`export`; ``lce_outputs.npz`` and one JSON line of
timings back. Ops: ``dense`` (float ``weight`` ``(out, in)`` float32, optional ``bias``),
``binary_dense`` (``signs`` int8 ``(out, in)`` of +-1: ``y = sign(x) signs^T``, sign(0) = +1 in
both libraries), ``batchnorm`` (``gamma``, ``beta``, ``mean``, ``var``, ``eps``: eval-mode
``(x - mean) / sqrt(var + eps) * gamma + beta``), ``htanh`` (``clip(x, -1, 1)``).

``python -m bnnbench.bench.lce --lce-python PATH`` prints the section;
``python -m bnnbench.bench.packed_inference --lce-python PATH`` puts it in
``reports/packed_inference.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bnnbench.bench import GEOMETRY, MLP_4096, composed, median_ms, trained_like_batchnorm
from bnnbench.errors import BnnbenchError
from bnnbench.files import write_atomic
from bnnbench.nn.layers import QuantLinear
from bnnbench.nn.quantizers import SignQuantizer
from bnnbench.packed.format import load_packed, save_packed
from bnnbench.spec import build_net

LCE_SCRIPT = Path(__file__).with_name("lce_larq.py")
ENV_VAR = "BNNBENCH_LCE_PYTHON"
BATCHES = (1, 256)
THREADS = (1, 2)
#: |bnnbench logit - LCE logit| allowed: both compute the float first and last layers in fp32
#: in different summation orders (the binary layers are integer-exact in both)
LOGIT_ATOL = 1e-3
#: rows whose logits may differ by more: where a first-layer output lies within fp32 rounding
#: of its sign threshold, the two libraries can binarize it differently (measured: 4-5 of 256
#: rows, each with a unit within 5e-5 of its threshold relative to sum |w x|, the size of
#: a 784-term fp32 dot product's error bound); the classes must still all agree
ROWS_OFF_SHARE = 0.05
#: the network's seed (its weights; the inputs have their own generator): every run compares
#: the same network
SEED = 0
#: the LCE process: conversions of four 17-150 MB models and 64 timed interpreters
LCE_TIMEOUT_S = 1800
SKIP_NO_PYTHON = (f"LCE comparison: skipped (no LCE environment: pass --lce-python PATH or set "
                  f"{ENV_VAR}; README, 'Against the Larq Compute Engine', says how to make one)")


# --------------------------------------------------------------------------- bnnbench -> arrays
def larq_plan(net: nn.Module) -> tuple[list[dict], dict[str, np.ndarray]]:
    """``net`` (an ``nn.Sequential`` BinaryNet MLP, eval mode) as LCE ops and their arrays.

    Flatten, Dropout and Identity are no-ops in eval mode and left out; anything else without a
    Larq counterpart is one BnnbenchError naming the layer.
    """
    if not isinstance(net, nn.Sequential):
        raise BnnbenchError(f"the LCE comparison maps a Sequential MLP, got "
                            f"{type(net).__name__}; use model=mlp")
    if net.training:
        raise BnnbenchError("the LCE comparison exports a network in eval mode; call .eval()")
    plan: list[dict] = []
    arrays: dict[str, np.ndarray] = {}

    def put(key: str, value: torch.Tensor, dtype=np.float32) -> str:
        arrays[key] = value.detach().cpu().numpy().astype(dtype)
        return key

    with torch.no_grad():
        for name, layer in net.named_children():
            if isinstance(layer, (nn.Flatten, nn.Dropout, nn.Identity)):
                continue
            if type(layer) is QuantLinear:
                if not (isinstance(layer.weight_quantizer, SignQuantizer)
                        and isinstance(layer.input_quantizer, SignQuantizer)):
                    raise BnnbenchError(f"layer {name}: the LCE comparison needs sign weights "
                                        "and sign inputs (+method=bnn)")
                signs = layer.quantized_weight()
                if not bool(((signs == 1) | (signs == -1)).all()):
                    raise BnnbenchError(f"layer {name}: weights are not +-1 after the sign")
                op = {"op": "binary_dense", "signs": put(f"{name}.signs", signs, np.int8)}
            elif type(layer) is nn.Linear:
                op = {"op": "dense", "weight": put(f"{name}.weight", layer.weight)}
            elif isinstance(layer, nn.BatchNorm1d) and layer.affine and layer.track_running_stats:
                op = {"op": "batchnorm", "eps": float(layer.eps),
                      **{k: put(f"{name}.{k}", t) for k, t in (
                          ("gamma", layer.weight), ("beta", layer.bias),
                          ("mean", layer.running_mean), ("var", layer.running_var))}}
            elif isinstance(layer, nn.Hardtanh) and (layer.min_val, layer.max_val) == (-1, 1):
                op = {"op": "htanh"}
            else:
                raise BnnbenchError(f"layer {name} ({type(layer).__name__}) has no Larq "
                                    "counterpart in the LCE comparison; use +method=bnn "
                                    "model=mlp")
            if op["op"] in ("dense", "binary_dense") and getattr(layer, "bias", None) is not None:
                op["bias"] = put(f"{name}.bias", layer.bias)
            plan.append(op)
    return plan, arrays


def first_binary_layer(net: nn.Module) -> str:
    return next(name for name, m in net.named_children() if type(m) is QuantLinear)


def export(net: nn.Module, workdir: Path, inputs: dict[int, torch.Tensor],
           layer_inputs: dict[int, torch.Tensor], repeats: int, warmup: int = 3,
           threads: tuple[int, ...] = THREADS) -> Path:
    """Write ``weights.npz`` and ``request.json`` for the LCE process into ``workdir``.

    Two models: ``mlp``, the whole ``net`` on ``inputs`` (batch -> images, flattened);
    ``layer``, its first binary layer alone on ``layer_inputs`` (batch -> float rows).
    """
    plan, arrays = larq_plan(net)
    layer_op = next(op for op in plan if op["op"] == "binary_dense")
    models = {"mlp": {"plan": plan, "binary_as": ["bconv", "quantdense"], "inputs": {}},
              "layer": {"plan": [layer_op], "binary_as": ["bconv", "quantdense"],
                        "inputs": {}}}
    for model, given in (("mlp", inputs), ("layer", layer_inputs)):
        for batch, x in given.items():
            key = f"{model}.inputs.{batch}"
            arrays[key] = x.reshape(batch, -1).numpy().astype(np.float32)
            models[model]["inputs"][str(batch)] = key
    np.savez(workdir / "weights.npz", **arrays)
    request = {"models": models, "threads": list(threads), "repeats": repeats, "warmup": warmup}
    write_atomic(workdir / "request.json", json.dumps(request, indent=1))
    return workdir


# ------------------------------------------------------------------------ the LCE process
def lce_python(given: str | None) -> str | None:
    """The LCE environment's python: ``given``, else ``$BNNBENCH_LCE_PYTHON``, else None."""
    return given or os.environ.get(ENV_VAR) or None


def _child(python: str, args: list[str], timeout: float) -> dict:
    try:
        out = subprocess.run([python, str(LCE_SCRIPT), *args], capture_output=True, text=True,
                             timeout=timeout, check=False)
    except OSError as err:
        raise BnnbenchError(f"{python} cannot run ({err.strerror})") from err
    except subprocess.TimeoutExpired as err:
        raise BnnbenchError(f"the LCE process ran past {timeout:.0f} s") from err
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        raise BnnbenchError(lines[-1][:200] if lines else f"exit status {out.returncode}")
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as err:
        raise BnnbenchError(f"{LCE_SCRIPT.name} printed no JSON line; run it by hand with "
                            f"{python} to see why") from err


def probe(python: str) -> dict[str, str]:
    """The LCE environment's library versions; BnnbenchError with the reason it cannot run."""
    if not Path(python).is_file():
        raise BnnbenchError(f"{python}: no such file")
    return _child(python, ["--probe"], timeout=300)


def run_lce(python: str, workdir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The LCE process's JSON (versions, timing rows, converted ops) and its outputs."""
    result = _child(python, [str(workdir)], timeout=LCE_TIMEOUT_S)
    with np.load(workdir / "lce_outputs.npz") as f:
        return result, dict(f)


# ------------------------------------------------------------------------ agreement, timing
def agreement(ours: np.ndarray, theirs: np.ndarray, exact: bool) -> tuple[bool, str]:
    """Whether LCE's outputs equal bnnbench's, and how close they are, in words.

    ``exact``: every value equal (integer outputs). Else every logit within
    :data:`LOGIT_ATOL` in all but :data:`ROWS_OFF_SHARE` of the rows; the classes (argmax) are
    counted, not tested apart: where two rows' classes differ, some logit differs by at least
    half the gap between those two logits (``ours_i - ours_j <= |d_i| + |d_j|``), so within
    the atol only a tie can change a class, and the rows off may hold near-tied logits.
    """
    if ours.shape != theirs.shape:
        return False, f"shapes differ: {ours.shape} vs {theirs.shape}"
    d = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    if exact:
        wrong = int((d > 0).sum())
        return wrong == 0, ("equal" if wrong == 0 else
                            f"{wrong} values differ, max |d| {d.max():.3g} (DIFFER)")
    n = len(d)
    rows = d.reshape(n, -1).max(1)
    off = int((rows > LOGIT_ATOL).sum())
    same_class = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    ok = off <= int(ROWS_OFF_SHARE * n)
    return ok, (f"logits within {LOGIT_ATOL:g} in {n - off} of {n} rows (max |d| "
                f"{rows.max():.1e}), classes equal in {same_class} of {n}"
                + ("" if ok else " (DIFFER)"))


@torch.inference_mode()
def bnnbench_side(path: Path, inputs: dict[int, torch.Tensor],
                  layer_inputs: dict[int, torch.Tensor], layer: str, repeats: int,
                  threads: tuple[int, ...] = THREADS) -> tuple[dict, dict]:
    """bnnbench's times ``{(model, batch, threads): ms}`` and outputs ``{(model, batch): array}``:
    the packed model (fused, as ``load_packed`` gives it) and its layer ``layer`` alone (from the
    unfused model: float input, float output, like LCE's one-layer model)."""
    packed = load_packed(path)
    single = load_packed(path, fuse=False).get_submodule(layer)
    calls = {"mlp": (packed, inputs), "layer": (single, layer_inputs)}
    times, outputs = {}, {}
    saved = torch.get_num_threads()
    try:
        for model, (fn, given) in calls.items():
            for batch, x in given.items():
                outputs[(model, batch)] = fn(x).numpy()
                for t in threads:
                    torch.set_num_threads(t)  # the compiled kernels follow torch's count
                    times[(model, batch, t)] = median_ms(lambda: fn(x), repeats, warmup=3)
    finally:
        torch.set_num_threads(saved)
    return times, outputs


# ---------------------------------------------------------------------------- the section
HEADER = [
    "| model | batch | threads | bnnbench packed ms | LCE binary kernel ms (best variant) | "
    "bnnbench vs LCE binary | LCE QuantDense ms (best variant) | outputs vs bnnbench |",
    "|---|---|---|---|---|---|---|---|",
]
MODEL_LABELS = {"mlp": "BinaryNet MLP 784-4096x3-10",
                "layer": "binary layer 4096 -> 4096 alone"}


def _best(rows: list[dict], model: str, binary_as: str, batch: int, threads: int
          ) -> tuple[float, str]:
    mine = [r for r in rows if (r["model"], r["binary_as"], r["batch"], r["threads"])
            == (model, binary_as, batch, threads)]
    best = min(mine, key=lambda r: r["ms"])
    return best["ms"], best["variant"]


def table_rows(ours_ms: dict, ours_out: dict, lce: dict, lce_out: dict[str, np.ndarray]
               ) -> list[str]:
    """One row per (model, batch, threads): bnnbench vs LCE's fastest variant of each build.

    Every variant's outputs are checked against bnnbench's; a row whose LCE outputs differ
    gives no speedup."""
    out = []
    for (model, batch), ours in ours_out.items():
        theirs_all = [theirs for key, theirs in lce_out.items()
                      if key.split("|")[0] == model and key.split("|")[2] == str(batch)]
        checks = [(*agreement(ours, theirs, exact=model == "layer"),
                   float(np.abs(ours.astype(np.float64) - theirs).max())
                   if theirs.shape == ours.shape else np.inf) for theirs in theirs_all]
        ok = bool(checks) and all(c[0] for c in checks)
        worst = min(checks, key=lambda c: (c[0], -c[2]))[1] if checks else "no LCE output"
        for threads in sorted({t for (m, b, t) in ours_ms if (m, b) == (model, batch)}):
            mine = ours_ms[(model, batch, threads)]
            b_ms, b_var = _best(lce["rows"], model, "bconv", batch, threads)
            q_ms, q_var = _best(lce["rows"], model, "quantdense", batch, threads)
            speed = f"{b_ms / mine:.2f}x" if ok else "- (outputs differ)"
            out.append(f"| {MODEL_LABELS[model]} | {batch} | {threads} | {mine:.3f} | "
                       f"{b_ms:.3f} ({b_var}) | {speed} | {q_ms:.3f} ({q_var}) | {worst} |")
    return out


def notes(python: str, lce: dict, repeats: int, load: float) -> list[str]:
    v = lce["versions"]
    ops = {k: ", ".join(dict.fromkeys(o)) for k, o in lce.get("ops", {}).items()}
    return [
        f"- LCE {v['larq_compute_engine']}, larq {v['larq']}, tensorflow {v['tensorflow']} "
        f"(tf-keras {v['tf_keras']}, numpy {v['numpy']}), run by `{python}` as a separate "
        "process (`bnnbench/bench/lce_larq.py`; `bnnbench.bench.lce`). LCE's kernels are "
        "tuned for 64-bit ARM; on x86 its binary kernels run their portable C++ path (its "
        "interpreter's docstring: 'not optimized for speed'), so these rows are this x86 "
        "CPU's, not LCE's on an ARM board.",
        "- Same network and weights in both: BinaryNet's MLP 784-4096x3-10 (`+method=bnn "
        "model=mlp model.hidden_features=4096`; float first and last layers, two sign x sign "
        "4096 x 4096 layers, BatchNorm after every layer, `trained_like_batchnorm` statistics), "
        "exported to arrays and rebuilt in Larq; same random inputs. *bnnbench packed*: "
        "`load_packed` (BatchNorm -> sign folded between the binary layers); the layer alone "
        "from `load_packed(..., fuse=False)` (float in, pack, XNOR-popcount GEMM, float out). "
        "*LCE binary kernel*: each binary layer as `larq.layers.QuantConv2D` 1x1 on "
        "(B, 1, 1, 4096), `ste_sign` input and kernel quantizers, converted with "
        "`larq_compute_engine.convert_keras_model` (one flatbuffer per batch size: its shape is "
        "fixed) to `LceBconv2d`, BatchNorm -> sign folded into the bconv's output thresholds "
        f"(ops: {ops.get('mlp.bconv', '?')}). *LCE QuantDense*: the layers as "
        "`larq.layers.QuantDense`, which LCE 0.16 converts to a float32 GEMM on dequantized "
        f"+-1 weights (ops: {ops.get('mlp.quantdense', '?')}). Each LCE build runs under every "
        "interpreter variant (default or indirect bgemm, XNNPack delegate off or on); the "
        "fastest is shown. Threads: `torch.set_num_threads` for bnnbench (its compiled "
        "kernels follow it), the interpreter's `num_threads` for LCE. Median of "
        f"{repeats} calls after 3 warm-up calls, the whole batch per call, each side alone on "
        "the machine (bnnbench first, then the LCE process); load average before the runs: "
        f"{load:.2f} (on a shared machine the 2-thread rows are the least reliable).",
        "- *outputs vs bnnbench*: every LCE build and variant against bnnbench's packed "
        f"outputs: the network's logits within {LOGIT_ATOL:g} in all but {ROWS_OFF_SHARE:.0%} "
        "of the rows (the float first layer's fp32 rounding in two summation orders can flip a "
        "hidden unit that lies on its sign threshold, and a row's class with it where the "
        "weights, untrained, leave two logits near-tied), the layer's integer outputs equal; "
        "the worst case is shown.",
        "",
    ]


def section(python_given: str | None, repeats: int, workdir: Path,
            batches: tuple[int, ...] = BATCHES) -> list[str]:
    """The report's "LCE comparison" lines: one line when LCE is not available."""
    python = lce_python(python_given)
    if python is None:
        return [SKIP_NO_PYTHON]
    try:
        probe(python)
    except BnnbenchError as err:
        return [f"LCE comparison: skipped ({python} cannot run LCE: {err})"]
    cfg = composed(["+method=bnn", *MLP_4096])
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        net = trained_like_batchnorm(build_net(cfg, GEOMETRY)).eval()
    path = save_packed(net, workdir / "lce_mlp.safetensors", cfg, GEOMETRY)
    layer = first_binary_layer(net)
    width = net.get_submodule(layer).in_features
    g = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 1, 28, 28, generator=g) for b in batches}
    layer_inputs = {b: torch.randn(b, width, generator=g) for b in batches}
    export(net, workdir, inputs, layer_inputs, repeats)
    load = os.getloadavg()[0]
    ours_ms, ours_out = bnnbench_side(path, inputs, layer_inputs, layer, repeats)
    try:
        lce, lce_out = run_lce(python, workdir)
    except BnnbenchError as err:
        return [f"LCE comparison: failed ({err})"]
    return [*notes(python, lce, repeats, load), *HEADER,
            *table_rows(ours_ms, ours_out, lce, lce_out)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lce-python", default=None,
                        help=f"the LCE environment's python (default ${ENV_VAR})")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for line in section(args.lce_python, args.repeats, Path(tmp)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
