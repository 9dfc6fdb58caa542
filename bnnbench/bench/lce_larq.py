"""The Larq Compute Engine side of :mod:`bnnbench.bench.lce`; runs ONLY in an LCE environment.

Imports nothing but tensorflow, larq, larq_compute_engine and numpy (LCE 0.16 needs
tensorflow-cpu 2.16, tf-keras 2.16 and numpy < 2, which bnnbench's own environment does not
hold), so bnnbench runs it as a separate process with that environment's python:

    <lce python> lce_larq.py --probe    one JSON line: the library versions
    <lce python> lce_larq.py WORKDIR    reads WORKDIR/request.json and WORKDIR/weights.npz
                                        (written by bnnbench.bench.lce.export), writes every
                                        output to WORKDIR/lce_outputs.npz, prints one JSON line
                                        with the timings

The request's ``plan`` is the network as a list of ops (``dense``, ``binary_dense``,
``batchnorm``, ``htanh``) naming arrays of weights.npz; :func:`build` turns it into a Keras
model with Larq layers, converted by ``larq_compute_engine.convert_keras_model`` for one fixed
batch size (an LCE flatbuffer has a fixed input shape) and run by LCE's interpreter.

A ``binary_dense`` op (sign inputs, sign weights: ``y = sign(x) sign(W)^T``) is built two ways:

* ``bconv``: ``larq.layers.QuantConv2D`` with a 1x1 kernel on the input reshaped to
  ``(B, 1, 1, C)``, ``ste_sign`` input and kernel quantizers: LCE converts it to its binary
  kernel ``LceBconv2d`` (bit-packed weights, XNOR-popcount GEMM), and a BatchNorm -> sign
  between two of them into the first one's output thresholds (bit-packed output). The
  ``htanh`` just before a binary layer is left out here: ``sign(htanh(y)) = sign(y)``, so the
  function is unchanged, and LCE's converter only folds BatchNorm -> sign when nothing sits
  between them (bnnbench folds the same pair, ``bnnbench.packed.fusion``).
* ``quantdense``: ``larq.layers.QuantDense`` as a Larq user writes it; LCE 0.16 has no binary
  dense kernel and converts it to ``LceQuantize -> LceDequantize -> FULLY_CONNECTED`` with
  float32 +-1 weights (a float GEMM).

Each model runs under every interpreter variant (LCE's default bgemm or its indirect bgemm,
XNNPack delegate off or on) at 1 and 2 threads; a timing is the median of ``repeats`` calls of
the interpreter's own ``predict`` on the whole batch, after ``warmup`` calls.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # larq needs Keras 2 (tf-keras) on TF 2.16
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

#: interpreter variants: name -> Interpreter keyword arguments
VARIANTS = {
    "bgemm": {},
    "indirect bgemm": {"use_indirect_bgemm": True},
    "bgemm + xnnpack": {"use_xnnpack": True},
    "indirect bgemm + xnnpack": {"use_indirect_bgemm": True, "use_xnnpack": True},
}
#: what a quantdense model runs: no LceBconv2d, so only the float kernels' choice matters
FLOAT_VARIANTS = ("bgemm", "bgemm + xnnpack")


def versions() -> dict[str, str]:
    import larq
    import larq_compute_engine
    import tensorflow as tf
    from importlib.metadata import version

    del larq, larq_compute_engine  # imported to prove they load; versions from the metadata
    return {"tensorflow": tf.__version__, "larq": version("larq"),
            "larq_compute_engine": version("larq-compute-engine"),
            "tf_keras": version("tf-keras"), "numpy": np.__version__}


def build(plan: list[dict], arrays: dict[str, np.ndarray], batch: int, binary_as: str):
    """The Keras (tf-keras) model of ``plan`` with fixed batch ``batch``, weights set."""
    import larq as lq
    import tensorflow as tf

    keras = tf.keras
    first = plan[0]
    width = arrays[first["weight"] if first["op"] == "dense" else first["signs"]].shape[1]
    x = inputs = keras.Input((width,), batch_size=batch)
    setters = []
    for i, op in enumerate(plan):
        kind = op["op"]
        spatial = len(x.shape) == 4
        if kind == "dense":
            w = arrays[op["weight"]]  # (out, in), torch's layout
            if spatial:
                x = keras.layers.Reshape((w.shape[1],))(x)
            layer = keras.layers.Dense(w.shape[0], use_bias=op.get("bias") is not None)
            x = layer(x)
            setters.append((layer, [w.T] + ([arrays[op["bias"]]] if op.get("bias") else [])))
        elif kind == "binary_dense":
            s = arrays[op["signs"]].astype(np.float32)  # (out, in), entries +-1
            bias = [arrays[op["bias"]]] if op.get("bias") else []
            common = dict(use_bias=bool(bias), input_quantizer="ste_sign",
                          kernel_quantizer="ste_sign", kernel_constraint=None)
            if binary_as == "bconv":
                if not spatial:
                    x = keras.layers.Reshape((1, 1, s.shape[1]))(x)
                layer = lq.layers.QuantConv2D(s.shape[0], 1, **common)
                setters.append((layer, [s.T[None, None]] + bias))
            else:
                if spatial:
                    x = keras.layers.Reshape((s.shape[1],))(x)
                layer = lq.layers.QuantDense(s.shape[0], **common)
                setters.append((layer, [s.T] + bias))
            x = layer(x)
        elif kind == "batchnorm":
            layer = keras.layers.BatchNormalization(epsilon=op["eps"])
            x = layer(x)
            setters.append((layer, [arrays[op[k]] for k in ("gamma", "beta", "mean", "var")]))
        elif kind == "htanh":
            nxt = plan[i + 1]["op"] if i + 1 < len(plan) else None
            if not (binary_as == "bconv" and nxt == "binary_dense"):  # sign(htanh(y)) = sign(y)
                x = keras.layers.Activation(lq.activations.hard_tanh)(x)
        else:
            raise ValueError(f"unknown op {kind!r}")
    if len(x.shape) == 4:
        x = keras.layers.Reshape((x.shape[-1],))(x)
    model = keras.Model(inputs, x)
    for layer, weights in setters:
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


def median_ms(call, x: np.ndarray, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(x)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def run(workdir: str) -> dict:
    import larq_compute_engine as lce
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    with open(os.path.join(workdir, "request.json")) as f:
        request = json.load(f)
    arrays = dict(np.load(os.path.join(workdir, "weights.npz")))
    rows, outputs, ops = [], {}, {}
    for model_name, spec in request["models"].items():
        for binary_as in spec["binary_as"]:
            variants = VARIANTS if binary_as == "bconv" else FLOAT_VARIANTS
            for batch_text, input_key in spec["inputs"].items():
                x = np.ascontiguousarray(arrays[input_key], dtype=np.float32)
                flatbuffer = lce.convert_keras_model(
                    build(spec["plan"], arrays, int(batch_text), binary_as))
                ops[f"{model_name}.{binary_as}"] = op_names(flatbuffer)
                for threads in request["threads"]:
                    for variant in variants:
                        interpreter = Interpreter(flatbuffer, num_threads=threads,
                                                 **VARIANTS[variant])

                        def call(inp, wrapped=interpreter.interpreter):
                            return wrapped.predict([inp])[0]  # the whole batch in one call

                        if threads == request["threads"][0]:
                            outputs[f"{model_name}|{binary_as}|{batch_text}|{variant}"] = call(x)
                        rows.append({"model": model_name, "binary_as": binary_as,
                                     "batch": int(batch_text), "threads": threads,
                                     "variant": variant,
                                     "ms": median_ms(call, x, request["warmup"],
                                                     request["repeats"])})
                        del interpreter
    np.savez(os.path.join(workdir, "lce_outputs.npz"), **outputs)
    return {"versions": versions(), "rows": rows, "ops": ops}


def op_names(flatbuffer: bytes) -> list[str]:
    """The converted model's operators in order (builtin names, LCE's custom ones)."""
    import io
    from contextlib import redirect_stdout

    import tensorflow as tf

    text = io.StringIO()
    with redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer)
    return [line.split("Op#", 1)[1].split(" ", 1)[1].split("(", 1)[0]
            for line in text.getvalue().splitlines() if "Op#" in line]


if __name__ == "__main__":
    out = versions() if sys.argv[1:] == ["--probe"] else run(sys.argv[1])
    sys.stdout.write("\n" + json.dumps(out) + "\n")
