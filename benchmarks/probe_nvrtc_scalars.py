"""How ``torch.cuda._compile_kernel`` (NVRTC) passes Python scalars, beside the MSL -> CUDA back end.

    python benchmarks/probe_nvrtc_scalars.py          # on a machine with a CUDA GPU

The wrapper converts a Python int to a C ``int`` (4 bytes) and a float to a C ``double`` (8 bytes),
whatever the kernel declares, and ``cuLaunchKernel`` copies as many bytes as each declared parameter
has: a ``float`` parameter reads the low half of the double and a ``long`` reads 4 bytes past the int.
The MSL -> CUDA back end never relies on this: its launchers are generated from the parsed signature
(every scalar travels in the 8 bytes ``compile_shader`` binds, and is read as the declared type).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SOURCE = r"""
extern "C" __global__ void axpy(const float* x, float* y, float a, long n) {
  long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i];
}"""


def main():
    from torch.cuda import _compile_kernel
    kernel = _compile_kernel(SOURCE, "axpy")
    x = torch.ones(1000, device="cuda")
    y = torch.full((1000,), -1.0, device="cuda")
    kernel(grid=(4, 1, 1), block=(256, 1, 1), args=[x, y, 2.0, 1000])
    torch.cuda.synchronize()
    print(f"torch.cuda._compile_kernel, args=[x, y, 2.0, 1000]: y[:3] = {y[:3].tolist()} "
          f"(2.0 expected; -1.0 means the kernel wrote nothing)")
    from natten_mps.metal import cuda
    lib = cuda.compile("""#include <metal_stdlib>
using namespace metal;
kernel void axpy(device const float* x [[buffer(0)]], device float* y [[buffer(1)]], constant float& a [[buffer(2)]],
                 constant long& n [[buffer(3)]], uint i [[thread_position_in_grid]]) {
  if ((long)i < n) y[i] = a * float(x[i]);
}""")
    y.fill_(-1.0)
    lib.axpy(x, y, 2.0, 1000, threads=1000, group_size=256)
    torch.cuda.synchronize()
    print(f"MSL -> CUDA back end, same arguments: y[:3] = {y[:3].tolist()}, all 2.0: {bool((y == 2.0).all())}")


if __name__ == "__main__":
    main()
