"""Compile every Triton kernel ahead of time for CUDA targets, without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, not whether they
compile: the CUDA code generator (layouts, int8 ``tl.dot``, ``tl.reshape``, ``libdevice.popc``)
and ``ptxas`` only run for real targets. This script lowers each kernel, for a representative
config of each autotune set, to PTX and cubin for sm_80 and sm_90 through ``triton.compile``.

Usage: ``python -m bnnbench.kernels.aot_check [--arch 80 90]`` (``TRITON_INTERPRET`` must be
unset). Prints one line per compile and exits non-zero if any fails.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    raise SystemExit("aot_check: unset TRITON_INTERPRET (the kernels must be JIT functions)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

T = importlib.import_module("bnnbench.kernels.triton_kernels")


#: integer arguments the runtime sees as 1 for contiguous tensors (Triton then specializes
#: them to the constant 1, which is what lets it vectorize the loads along K)
UNIT_STRIDES = ("stride_ak", "stride_wk", "stride_xk", "stride_cn", "stride_yn")
#: integer arguments of the GEMM-like kernels that are multiples of 16 at the benchmarked shapes
#: (N = K = 4096...; row strides of contiguous tensors); M stays unspecialized
DIV16_INTS = ("N", "K", "KW", "k", "stride_am", "stride_wn", "stride_xm", "stride_cm",
              "stride_ym", "stride_ap")


def _sig(fn, types: dict[str, str], consts: dict[str, object],
         specialize: bool = True) -> tuple[dict, dict, dict]:
    """Signature for every argument (pointers/ints from ``types``, default i32; constexprs) and
    the attributes the runtime would attach.

    ``specialize`` mimics Triton's launch-time specialization for contiguous tensors at the
    benchmarked shapes: every pointer 16-byte aligned (``tt.divisibility = 16``), the
    :data:`UNIT_STRIDES` equal to 1 (constants), the :data:`DIV16_INTS` multiples of 16.
    Without it (the old behaviour) the compiler must assume unaligned pointers and strides, and
    e.g. cannot use 16-byte or ``cp.async`` copies of 2-byte activations.
    """
    consts = dict(consts)
    attrs: dict[tuple[int, ...], list] = {}
    if specialize:
        for name in fn.arg_names:
            if name in UNIT_STRIDES and name not in consts:
                consts[name] = 1
    sig = {}
    for i, name in enumerate(fn.arg_names):
        sig[name] = "constexpr" if name in consts else types.get(name, "i32")
        if specialize and name not in consts and (name.endswith("_ptr") or name in DIV16_INTS):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _ptr(*names: str, ty: str = "*i32") -> dict[str, str]:
    return {n: ty for n in names}


def cases(every_config: bool = False):
    """(label, jit fn, pointer types, constexprs, num_warps, num_stages) per kernel/config/path.

    By default the first and last config of each autotune set; ``every_config`` compiles all.
    """
    def pick(cfgs):
        return cfgs if every_config else [cfgs[0], cfgs[-1]]

    out = []
    gemm_ptrs = _ptr("a_ptr", "w_ptr", "c_ptr", "t_ptr", "f_ptr")
    for use_dot, cfgs in ((False, T._xnor_gemv_configs()), (True, T._dot_configs())):
        path = "int8-dot" if use_dot else "popcount"
        for cfg in pick(cfgs):
            out.append((f"xnor_gemm {path} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                        T._xnor_gemm_kernel, gemm_ptrs,
                        {"SPLIT_K": 1, **cfg.kwargs, "USE_DOT": use_dot, "HW_POPC": True,
                         "SIGNS_OUT": False}, cfg.num_warps, cfg.num_stages))
    # the fused BatchNorm-threshold + sign + pack epilogue (unsplit tiles only)
    for use_dot, cfgs in ((False, T._popcount_configs()), (True, T._dot_configs())):
        path = "int8-dot" if use_dot else "popcount"
        for cfg in pick(cfgs):
            out.append((f"xnor_gemm_signs {path} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                        T._xnor_gemm_kernel, gemm_ptrs,
                        {**cfg.kwargs, "SPLIT_K": 1, "USE_DOT": use_dot, "HW_POPC": True,
                         "SIGNS_OUT": True}, cfg.num_warps, cfg.num_stages))
    mb_ptrs = {**_ptr("a_ptr", "w_ptr"), **_ptr("alpha_ptr", "scale_ptr", "bias_ptr", "y_ptr",
                                                 ty="*fp32")}
    for use_dot, cfgs in ((False, T._popcount_configs()), (True, T._multibit_dot_configs())):
        path = "int8-dot" if use_dot else "popcount"
        for cfg in pick(cfgs):
            out.append((f"multibit {path} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                        T._multibit_gemm_kernel, mb_ptrs,
                        {**cfg.kwargs, "USE_DOT": use_dot, "HW_POPC": True, "HAS_SCALE": True,
                         "HAS_BIAS": True}, cfg.num_warps, cfg.num_stages))
    for dt, fp32_mode in (("bf16", 0), ("fp16", 0), ("fp32", 2)):
        cfgs = T._bw_configs_for(torch_dtype(dt))
        for cfg in pick(cfgs):
            ptrs = {"x_ptr": f"*{dt}", "w_ptr": "*i32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
                    "y_ptr": f"*{dt}"}
            out.append((f"binary_weight_gemm {dt} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                        T._binary_weight_gemm_kernel, ptrs,
                        {**cfg.kwargs, "HAS_SCALE": True, "HAS_BIAS": True, "FP32_MODE": fp32_mode},
                        cfg.num_warps, cfg.num_stages))
    for dt in ("bf16", "fp16", "fp32"):
        ptrs = {"x_ptr": f"*{dt}", "w_ptr": "*i32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
                "y_ptr": f"*{dt}"}
        for layout, kernel, cfgs in (
                ("lanes", T._binary_weight_gemv_kernel, T._bw_gemv_configs()),
                ("words", T._binary_weight_gemv_words_kernel, T._bw_gemv_word_configs())):
            for cfg in pick(cfgs):
                out.append((f"binary_weight_gemv {layout} {dt} {cfg.kwargs} "
                            f"w{cfg.num_warps}s{cfg.num_stages}", kernel, ptrs,
                            {**cfg.kwargs, "HAS_SCALE": True, "HAS_BIAS": True},
                            cfg.num_warps, cfg.num_stages))
    conv_ptrs = {"x_ptr": "*i32", "w_ptr": "*i32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
                 "y_ptr": "*bf16", "t_ptr": "*i32", "f_ptr": "*i32"}
    for use_dot in (False, True):
        path = "int8-dot" if use_dot else "popcount"
        for signs in (False, True):
            name = "binary_conv2d_signs" if signs else "binary_conv2d"
            ptrs = {**conv_ptrs, "y_ptr": "*i32"} if signs else conv_ptrs
            for cfg in pick(T._conv_configs(use_dot)):
                out.append((f"{name} {path} {cfg.kwargs} w{cfg.num_warps}s{cfg.num_stages}",
                            T._binary_conv2d_kernel, ptrs,
                            {**cfg.kwargs, "USE_DOT": use_dot, "HW_POPC": True,
                             "HAS_SCALE": not signs, "HAS_BIAS": not signs,
                             "SIGNS_OUT": signs}, cfg.num_warps, cfg.num_stages))
    out.append(("pack_signs", T._pack_signs_kernel, {"x_ptr": "*bf16", "out_ptr": "*i32"},
                {"BLOCK_R": 16, "BLOCK_W": 4}, 4, 1))
    for out_ty in ("*fp16", "*i8"):
        out.append((f"unpack_signs {out_ty[1:]}", T._unpack_signs_kernel,
                    {"p_ptr": "*i32", "out_ptr": out_ty}, {"BLOCK_R": 8, "BLOCK_W": 8}, 4, 1))
    out.append(("pack_conv_input", T._pack_conv_input_kernel,
                {"x_ptr": "*fp32", "out_ptr": "*i32"}, {"BLOCK_R": 32, "BLOCK_CW": 2}, 4, 1))
    return out


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _resource_usage(cubin: bytes) -> str:
    """Registers / spill stack / shared memory from ``cuobjdump --dump-resource-usage``."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return f"{len(cubin)} B cubin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=False)
    fields = re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res.stdout)
    return " ".join(f"{k}:{v}" for k, v in fields) or f"{len(cubin)} B cubin"


def _code_counts(kernel) -> str:
    """What the speed depends on, counted in the compiled code: ``cp.async`` copies in the PTX
    (software-pipelined loads), and POPC / IMMA / HMMA / LDGSTS instructions in the SASS."""
    ptx = kernel.asm.get("ptx", "")
    counts = [f"cp.async:{ptx.count('cp.async.ca') + ptx.count('cp.async.cg')}"]
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if tool.exists():
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            sass = subprocess.run([str(tool), "--dump-sass", f.name], capture_output=True,
                                  text=True, check=False).stdout
        for op in ("POPC", "LDGSTS", "IMMA", "HMMA", "LOP3", "I2F"):
            n_op = len(re.findall(r"\b" + op + r"\b", sass))
            counts.append(f"{op}:{n_op}")
        n_sass = len(re.findall(r"/\*[0-9a-f]{4}\*/", sass))
        counts.append(f"SASS:{n_sass}")
        counts.append(_loop_counts(sass))
    return " ".join(counts)


LOOP_OPS = ("POPC", "LDGSTS", "LDG", "LDS", "IMMA", "HMMA", "HGMMA", "IGMMA", "I2F", "F2F",
            "SHF", "LOP3", "FADD", "IADD3", "IMAD", "PRMT", "BAR")


def _loop_counts(sass: str) -> str:
    """Instructions in the innermost loop with the most of them (one K step of the main loop):
    the SASS between a backward branch's target and the branch. ``loop[n]`` then per-opcode
    counts, e.g. to check that the binary-weight GEMV's K step has no I2F (no int-to-float
    conversion per weight) and count its shifts, xors and adds per weight."""
    instrs = [(int(a, 16), op) for a, op in
              re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)]
    best: list[str] = []
    for addr, op in instrs:
        if not op.startswith("BRA"):
            continue
        line = re.search(r"/\*%04x\*/[^\n]*BRA[^\n]*?(0x[0-9a-f]+)" % addr, sass)
        if not line:
            continue
        target = int(line.group(1), 16)
        if target < addr:
            body = [o for a, o in instrs if target <= a <= addr]
            if len(body) > len(best):
                best = body
    if not best:
        return "loop:none"
    base = [o.split(".")[0] for o in best]
    per = " ".join(f"{op}:{base.count(op)}" for op in LOOP_OPS if base.count(op))
    return f"loop[{len(best)}]({per})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--only", default="", help="substring filter on the case label")
    ap.add_argument("--all", action="store_true", help="every autotune config, not 2 per set")
    ap.add_argument("--counts", action="store_true",
                    help="also count cp.async (PTX) and POPC/LDGSTS/IMMA/HMMA/LOP3/I2F (SASS)")
    ap.add_argument("--no-specialize", action="store_true",
                    help="compile without the runtime's specialization (aligned pointers, unit "
                         "K strides, multiples of 16): the old, pessimistic code")
    args = ap.parse_args(argv)
    failed = spilled = smem_low = 0
    for arch in args.arch:
        target = GPUTarget("cuda", arch, 32)
        for label, fn, ptrs, consts, warps, stages in cases(args.all):
            if args.only not in label:
                continue
            sig, const, attrs = _sig(fn, ptrs, consts, not args.no_specialize)
            t0 = time.perf_counter()
            try:
                k = triton.compile(ASTSource(fn, sig, const, attrs), target=target,
                                   options={"num_warps": warps, "num_stages": stages})
                # cuobjdump reports the static SHARED only; Triton allocates dynamically
                usage = _resource_usage(k.asm["cubin"]).replace(
                    "SHARED:1024", f"SHARED:{k.metadata.shared}")
                if args.counts:
                    usage += " " + _code_counts(k)
                spill = re.search(r"STACK:(\d+)", usage)
                if spill and int(spill.group(1)) > 0:
                    spilled += 1
                status = f"ok   {usage}"
                if "BLOCK_M" in consts and "USE_DOT" in consts:  # the autotuner's smem model
                    cfg = triton.Config({k: consts[k] for k in
                                         ("BLOCK_M", "BLOCK_N", "BLOCK_KW")}, num_stages=stages)
                    model = T._smem_bytes(cfg, consts["USE_DOT"])
                    if k.metadata.shared > model:
                        smem_low += 1
                        status += f" SMEM-MODEL-LOW (model {model})"
            except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
                failed += 1
                msg = str(e).strip().splitlines()
                status = "FAIL " + (msg[-1] if msg else type(e).__name__)[:300]
            print(f"sm_{arch} {label:<90} {status} ({time.perf_counter() - t0:.1f}s)",
                  flush=True)
    print(f"{failed} failed, {spilled} compiled with register spills, {smem_low} use more shared "
          "memory than the autotuner's model")
    return 1 if failed or spilled or smem_low else 0


if __name__ == "__main__":
    raise SystemExit(main())
