"""The pure path on CUDA equals the CPU result and the float64 reference (runs where CUDA exists).

On CPU-only machines (CI) these tests are skipped: they need the hardware, not missing work.
They were run on the lent NVIDIA machine (see the closing notes / README).
"""
import random

import pytest
import torch

import natten_mps
from reference import reference_na
from test_na_correctness import FNS, make_inputs, random_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("rank,i", [(r, i) for r in (1, 2, 3) for i in range(6)])
def test_cuda_matches_cpu_and_reference(rank, i):
    natten_mps.set_backend("pure")
    cfg = random_config(random.Random(7000 * rank + i), rank)
    tensors = make_inputs(cfg, torch.float32, seed=i)
    results = {}
    for device in ("cpu", "cuda"):
        ts = [None if t is None else t.detach().to(device).requires_grad_() for t in tensors]
        q, k, v, ak, av = ts
        out, lse = FNS[rank](q, k, v, cfg["kernel_size"], stride=cfg["stride"], dilation=cfg["dilation"],
                             is_causal=cfg["is_causal"], additional_keys=ak, additional_values=av, return_lse=True)
        assert out.device.type == device
        w = torch.arange(out.numel(), dtype=torch.float32, device=device).reshape(out.shape).sin()
        ((out * w).sum() + lse.sum()).backward()
        results[device] = [out.cpu(), lse.cpu()] + [t.grad.cpu() for t in ts if t is not None]
    ro, rl = reference_na(*[t.double() for t in tensors[:3]], cfg["kernel_size"], cfg["stride"], cfg["dilation"],
                          cfg["is_causal"], add_k=None if tensors[3] is None else tensors[3].double(),
                          add_v=None if tensors[4] is None else tensors[4].double())
    torch.testing.assert_close(results["cuda"][0].double(), ro, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results["cuda"][1].double(), rl, atol=1e-4, rtol=1e-4)
    for a, b in zip(results["cuda"], results["cpu"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
