"""Compile every Triton kernel launch the entry points make, for real GPUs (sm_80, sm_90), on a machine without one.

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python, not the compiler: a kernel can pass every
interpreter test and still fail to compile for a GPU (dtype rules, constexpr use, layouts, shared memory).
Here each kernel object is replaced by a recorder, the Python entry points are called on small CPU tensors
(they compute launch arguments and tiles exactly as on a GPU, then "launch" into the recorder), and each recorded
launch is compiled ahead of time with `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` down to
a cubin with the ptxas that ships with Triton. No kernel runs.

    python tests/triton_aot.py            # prints one line per compiled variant; exit 1 if any failed

Run by tests/test_kernels_compile.py in a subprocess (it needs TRITON_INTERPRET unset).
"""
from __future__ import annotations

import os
import sys
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET=1: the kernels must be JIT functions, not interpreted ones")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGETS = [("sm_80", GPUTarget("cuda", 80, 32)), ("sm_90", GPUTarget("cuda", 90, 32))]
#: shared memory a block may use (opt-in maximum): A100 163 KiB, H100/H200 227 KiB
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}
OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
_PTR = {torch.float32: "*fp32", torch.float64: "*fp64", torch.bfloat16: "*bf16", torch.float16: "*fp16",
        torch.int64: "*i64", torch.int32: "*i32", torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1"}


class Recorder:
    """Stands in for a JITFunction: `kernel[grid](*args, **kw)` records the call instead of launching."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((args, kw))


def _type(value) -> str:
    if isinstance(value, torch.Tensor):
        return _PTR[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i64" if abs(value) >= 2 ** 31 else "i32"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unsupported kernel argument {type(value).__name__}")


def compile_call(fn, args, kw, target):
    """Compile one recorded launch of JITFunction `fn` for `target`; returns (cubin bytes, shared memory bytes)."""
    names = fn.arg_names
    values = dict(zip(names, args))
    values.update({k: v for k, v in kw.items() if k not in OPTIONS})
    const = {p.name for p in fn.params if p.is_constexpr}
    signature = {n: ("constexpr" if n in const else _type(values[n])) for n in names}
    constexprs = {n: values[n] for n in names if n in const}
    options = {k: v for k, v in kw.items() if k in OPTIONS}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                              options=options)
    return len(compiled.asm["cubin"]), int(compiled.metadata.shared)


def fallbacks(fn, args, kw) -> list:
    """Launch options the entry point would retry with if this launch ran out of shared memory (the attention
    kernel's `tile_candidates`; none for the others)."""
    if fn.__name__ != "_attention_jvp_kernel":
        return []
    import simattr.kernels.attention_jvp as A
    v = dict(zip(fn.arg_names, args))
    v.update(kw)
    dtype = {"*fp32": torch.float32, "*bf16": torch.bfloat16, "*fp16": torch.float16}[_type(v["Q"])]
    cands = A.tile_candidates(v["SQ"], v["SK"], v["D"], dtype, v["PRECISION"])
    return [dict(kw, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st) for bm, bn, _, w, st in cands[1:]]


def scenarios():
    """(kernel module, kernel attribute, label, callable making the entry-point calls) for every variant."""
    import simattr.kernels.attention_jvp as A
    import simattr.kernels.contract as C
    import simattr.kernels.maxsim as M
    g = torch.Generator().manual_seed(0)
    r = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(dtype)

    def contract(dtype):
        def run():
            C.contract_triton(r(3, 2, 20, 48, dtype=dtype), r(20, 48), r(2), torch.arange(20) // 2, 10)
        return run

    def maxsim(dtype, masks):
        def run():
            qm = torch.rand(4, 9, generator=g) > 0.3 if masks else None
            cm = torch.rand(4, 40, generator=g) > 0.3 if masks else None
            M.maxsim_triton(r(4, 9, 64, dtype=dtype), r(4, 40, 64, dtype=dtype), qm, cm)
        return run

    def attention(dtype, D, S, mask, constant_softmax, two_pass):
        def run():
            q, k, v = (r(2, 3, S, D, dtype=dtype) for _ in range(3))
            dq, dk, dv = (r(4, 2, 3, S, D, dtype=dtype) for _ in range(3))
            m = None
            if mask == "bool":
                m = torch.arange(S)[None, :] < torch.tensor([S, S // 2])[:, None]
            elif mask == "additive":
                m = torch.zeros(2, S).masked_fill(torch.arange(S)[None, :] >= S // 2, torch.finfo(torch.float32).min)
            A.attention_jvp(q, k, v, dq, dk, dv, mask=m, constant_softmax=constant_softmax, backend="triton",
                            two_pass=two_pass)
        return run

    out = [(C, "_contract_kernel", f"contract {dt}", contract(getattr(torch, dt)))
           for dt in ("float32", "float64", "bfloat16")]
    out += [(M, "_maxsim_kernel", f"maxsim {dt}{' masks' if mk else ''}", maxsim(getattr(torch, dt), mk))
            for dt, mk in (("float32", True), ("bfloat16", False))]
    for dt, D, S, mask, cp, two in (("float32", 64, 256, "bool", False, False), ("float32", 32, 64, None, True, False),
                                    ("float32", 128, 48, "additive", False, True),
                                    ("bfloat16", 64, 128, "bool", False, False)):
        out.append((A, "_attention_jvp_kernel", f"attention {dt} d={D} S={S} mask={mask} cp={cp} two_pass={two}",
                    attention(getattr(torch, dt), D, S, mask, cp, two)))
    return out


def main() -> int:
    import simattr.kernels.attention_jvp as A
    A.DEFAULTS["fp32_precision"] = "tf32x3"  # what a sm80+ GPU gets by default (the CPU entry would pick ieee)
    failures, done = [], 0
    for module, attr, label, run in scenarios():
        original = getattr(module, attr)
        rec = Recorder(original)
        setattr(module, attr, rec)
        try:
            run()
        finally:
            setattr(module, attr, original)
        seen = set()
        for args, kw in rec.calls:
            for tname, target in TARGETS:
                key = (tuple(_type(a) for a in args), tuple(sorted((k, str(v)) for k, v in kw.items())), tname)
                if key in seen:
                    continue
                seen.add(key)
                t = time.perf_counter()
                note = ""
                try:
                    for attempt in [kw] + fallbacks(original, args, kw):
                        size, shared = compile_call(original, args, attempt, target)
                        if shared <= SHARED_LIMIT[tname]:
                            break
                        note += (f" [{attempt.get('BLOCK_M')}x{attempt.get('BLOCK_N')} s{attempt.get('num_stages')}"
                                 f" needs {shared // 1024} KiB > {SHARED_LIMIT[tname] // 1024}: next]")
                    else:
                        raise RuntimeError(f"no configuration fits the shared memory:{note}")
                    done += 1
                    print(f"ok   {tname} {label}: cubin {size} bytes, shared {shared // 1024} KiB, "
                          f"{time.perf_counter() - t:.1f} s{note}", flush=True)
                except Exception as exc:  # noqa: BLE001 - report every failing variant
                    failures.append(f"{tname} {label}: {type(exc).__name__}: {str(exc)[:2000]}")
                    print(f"FAIL {failures[-1]}", flush=True)
    print(f"{done} compiled, {len(failures)} failed")
    return 1 if failures or done == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
