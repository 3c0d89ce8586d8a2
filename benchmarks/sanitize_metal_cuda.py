"""compute-sanitizer over every Metal kernel, translated to CUDA: memcheck, racecheck, synccheck.

    python benchmarks/sanitize_metal_cuda.py            # on a machine with a CUDA GPU and compute-sanitizer

Runs the workload below under each tool (only the translated kernels, ``mtl_kernel_*``, are checked),
then proves the tools see what they should: a planted shared-memory race (racecheck) and a planted
out-of-bounds write (memcheck) must be reported. Prints one table; exits 1 unless the workload is
clean under every tool and both planted bugs are caught.

Workload (``--workload sweep``): the NA sweep of the test suite through the public API with
``NATTEN_MPS_METAL_ON_CUDA`` (float32 over random ranks, kernels, dilations, strides, causal flags,
GQA; float16 and bfloat16), the tiled kernels' own sweep (tests/test_attention_kernels.py: forward
and backward, additional keys, head dims 8 to 256, dense attention, NaN containment), the
simdgroup-matrix dense kernels (tests/test_flash_simdgroup.py: forward and backward, every dtype,
causal, GQA, NaN containment, reruns; the 2-D NA forward), sageattn
through the same kernels, the split-op kernels (tests/test_split_kernels.py) and varlen
(tests/test_varlen.py), the INT8 sage kernels (tests/test_sage_int8.py), and the back ends' feature-test kernels (threadgroup reduction with barriers, SIMD collectives with a partial SIMD-group, simdgroup
matrices, partial threadgroups).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

HEADER = "#include <metal_stdlib>\nusing namespace metal;\n"
PLANTED_RACE = HEADER + """
kernel void planted_race(device float* out [[buffer(0)]], uint i [[thread_position_in_threadgroup]]) {
  threadgroup float buf[256];
  buf[i] = float(i);
  float neighbour = buf[(i + 1) % 256];     // another thread writes it, no barrier between
  out[i] = neighbour;
}"""
PLANTED_OOB = HEADER + """
kernel void planted_oob(device float* out [[buffer(0)]], uint i [[thread_position_in_grid]]) {
  out[i + 1] = 1.0f;                        // the last thread writes one past the end
}"""


def workload_sweep() -> None:
    import torch

    import natten_mps
    import sage_mps
    import test_emulator as te
    from natten_mps.metal import runtime
    from test_na_correctness import random_config, run_case

    natten_mps.set_metal_on_cuda(True)
    runtime.set_poison_outputs(True)
    natten_mps.set_backend("metal")
    n = 0
    for rank in (1, 2, 3):
        for i in range(5):
            run_case(random_config(random.Random(5000 * rank + i), rank), torch.float32, seed=i,
                     check_grad=False, device="cuda")
            n += 1
        for dtype in (torch.float16, torch.bfloat16):
            run_case(random_config(random.Random(900 + rank), rank), dtype, seed=rank, check_grad=False,
                     device="cuda")
            n += 1
    q = torch.randn(2, 4, 70, 32, device="cuda")
    for causal in (False, True):
        sage_mps.sageattn(q, q, q, is_causal=causal)
    import test_attention_kernels as tk
    from natten_mps.backends import gpu_profile
    for rank in (1, 2, 3):
        for i in range(3):
            tk.test_na_float32_forward_backward(rank, i, "cuda")
            n += 1
        for dtype in (torch.float16, torch.bfloat16):
            tk.test_na_low_precision(rank, dtype, "cuda")
            n += 1
        tk.test_na_additional_keys_fused(rank, rank + 1, "cuda")
    for dim in (8, 40, 128, 256):
        tk.test_na_head_dims(dim, "cuda")
        n += 1
    for args in ((37, 37, True, 4, 2, 32), (20, 45, False, 2, 1, 64)):
        tk.test_dense_attention(*args, torch.float32, "cuda")
        n += 1
    import pytest
    for small in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            tk.test_nan_stays_in_its_windows(small, "cuda", mp, gpu_profile.set_profile)
        gpu_profile.set_profile(None)
    # the small problems' kernels (the "_b4" family: batched staging, steps in groups, float rows)
    for i in range(len(tk.FLOAT_STAGED_CASES)):
        for dtype in (torch.float16, torch.bfloat16):
            with pytest.MonkeyPatch.context() as mp:
                tk.test_small_problem_forward_stages_float_rows(i, dtype, "cuda", mp)
            n += 1
    for i in range(len(tk.NARROW_CASES)):
        with pytest.MonkeyPatch.context() as mp:
            tk.test_narrow_slices_for_small_problems(i, i % 2 == 0, "cuda", mp)
        n += 1
    os.environ["NATTEN_MPS_METAL_WALK"] = "own"        # the own-window walk on every shape it takes
    for i, c in enumerate(tk.OWN_WALK_CASES):
        tk.check_na(c, torch.float32, seed=i, extra=2 if i % 2 else 0, dev="cuda")
        n += 1
    del os.environ["NATTEN_MPS_METAL_WALK"]
    import test_flash_simdgroup as tf      # the simdgroup-matrix dense kernels
    for case in tf.CASES:
        tf.test_matches_reference(case, "cuda")
        n += 1
    tf.test_matches_the_scalar_kernels("cuda")
    tf.test_nan_stays_with_the_queries_that_see_it("cuda")
    tf.test_backward_is_bit_identical_across_runs("cuda")
    for case in tf.NA_CASES:
        tf.test_na2d_forward_matches_reference(case, "cuda")
    tf.test_na2d_forward_nan_stays_in_its_windows("cuda")
    n += 4 + len(tf.NA_CASES)
    import test_split_kernels as ts
    import test_varlen as tv
    natten_mps.set_backend("auto")          # their float64 references run the pure path on the CPU
    for rank, seed, dtype in ((1, 0, torch.float32), (2, 3, torch.bfloat16), (3, 5, torch.float16)):
        ts.test_split_kernels_forward_backward("cuda", rank, seed, dtype)
        natten_mps.set_metal_on_cuda(True)
        tv.test_kernels_match_per_sample_reference("cuda", rank, seed, dtype)
        n += 2
    tv.test_kernels_write_zeros_in_tiles_that_are_all_padding("cuda")
    n += 1
    import test_sage_int8 as t8
    natten_mps.set_metal_on_cuda(True)
    t8.test_int8_quantization_kernel_is_exact("cuda", torch.float16)
    t8.test_int8_kernels_match_the_block_rule("cuda", True, True)
    t8.test_int8_kernels_agree_with_the_pytorch_numerics("cuda", torch.bfloat16)
    n += 3
    for name in dir(te):
        fn = getattr(te, name)
        if name.startswith("test_") and callable(fn) and "backend" in fn.__code__.co_varnames[:fn.__code__.co_argcount]:
            fn("cuda")
            n += 1
    torch.cuda.synchronize()
    print(f"workload: {n} cases ran")


def workload_planted(which: str) -> None:
    import torch

    from natten_mps.metal import cuda
    if which == "race":
        lib = cuda.compile(PLANTED_RACE)
        lib.planted_race(torch.zeros(256, device="cuda"), threads=256, group_size=256)
    else:
        lib = cuda.compile(PLANTED_OOB)
        lib.planted_oob(torch.zeros(1000, device="cuda"), threads=1000, group_size=128)
    torch.cuda.synchronize()


def kernel_filter(exe: str) -> list:
    """The option that restricts checking to the translated kernels, in this compute-sanitizer's syntax."""
    helptext = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    if "--kernel-regex" in helptext:
        return ["--kernel-regex", "kns=mtl_kernel"]
    if "--kernel-name" in helptext:
        return ["--kernel-name", "kns=mtl_kernel"]
    if "--filter" in helptext:
        return ["--filter", "kns=mtl_kernel"]
    return []


def run_tool(tool: str, workload: str) -> tuple:
    """(errors reported, seconds, log tail) of one workload under one compute-sanitizer tool."""
    import time
    exe = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")   # exact allocations: memcheck sees overruns
    cmd = [exe, "--tool", tool, *kernel_filter(exe), "--print-limit", "20",
           sys.executable, str(Path(__file__).resolve()), "--workload", workload]
    if tool == "racecheck":
        cmd[3:3] = ["--racecheck-report", "all"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    errors = int(m[-1]) if m else -1
    hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazard", text)
    if hazards:
        errors = max(errors, int(hazards[-1]))
    if proc.returncode != 0 and errors == 0:
        errors = -1      # the workload itself failed
    return errors, dt, text[-3000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=["sweep", "race", "oob"], help=argparse.SUPPRESS)
    ap.add_argument("--log", help="write every tool's output tail to this file")
    args = ap.parse_args()
    if args.workload == "sweep":
        workload_sweep()
        return 0
    if args.workload in ("race", "oob"):
        workload_planted(args.workload)
        return 0

    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU"
    print(f"compute-sanitizer over Metal kernels translated to CUDA on {gpu}")
    rows, ok, logs = [], True, []
    for tool, workload, want in (("memcheck", "sweep", "clean"), ("racecheck", "sweep", "clean"),
                                 ("synccheck", "sweep", "clean"), ("racecheck", "race", "caught"),
                                 ("memcheck", "oob", "caught")):
        errors, dt, tail = run_tool(tool, workload)
        good = errors == 0 if want == "clean" else errors > 0
        ok = ok and good
        rows.append((tool, workload, want, errors, dt, "ok" if good else "FAIL"))
        logs.append(f"==== {tool} {workload}: {errors} errors\n{tail}\n")
    print("| tool | workload | expected | errors reported | seconds | result |\n|---|---|---|---|---|---|")
    for tool, workload, want, errors, dt, res in rows:
        print(f"| {tool} | {workload} | {want} | {errors if errors >= 0 else 'workload failed'} | {dt:.0f} | {res} |")
    if args.log:
        Path(args.log).write_text("\n".join(logs))
    if not ok:
        print("\n".join(logs)[-6000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
