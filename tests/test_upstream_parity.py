"""Extra: parity with upstream NATTEN (its CPU/flex path) when `natten` is installed.

The float64 reference in reference.py is the project's judge; this is a second opinion. The test
extra lists `natten==0.21.7` and CI installs it (`pip install --no-build-isolation natten==0.21.7`
after torch: no CUDA code is built on CPU, about 30 s); without it these tests skip.
"""
import random
import warnings

import pytest
import torch

import natten_mps
from test_na_correctness import FNS, make_inputs, random_config

natten = pytest.importorskip("natten")


@pytest.mark.parametrize("rank,i", [(r, i) for r in (1, 2, 3) for i in range(6)])
def test_matches_upstream_natten(rank, i):
    cfg = random_config(random.Random(9100 * rank + i), rank)
    cfg["extra"] = 0 if i % 2 else cfg["extra"]
    cfg["dim"] = cfg["dim_v"] = 8   # upstream flex (eager) needs equal power-of-two head dims >= 8
    q, k, v, ak, av = make_inputs(cfg, torch.float32, seed=i)
    args = dict(kernel_size=cfg["kernel_size"], stride=cfg["stride"], dilation=cfg["dilation"],
                is_causal=cfg["is_causal"], additional_keys=ak, additional_values=av, return_lse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            up_out, up_lse = getattr(natten, f"na{rank}d")(q, k, v, **args)
        except NotImplementedError as e:   # e.g. causal full-window: upstream's flex FMHA has no causal
            pytest.skip(f"upstream natten has no CPU backend for {cfg}: {e}")
    for path in ("pure", "metal"):
        natten_mps.set_emulation(path == "metal")
        out, lse = FNS[rank](q, k, v, **args)
        torch.testing.assert_close(out, up_out, atol=1e-4, rtol=1e-4, msg=lambda m: f"{path} {cfg}: {m}")
        torch.testing.assert_close(lse, up_lse, atol=1e-4, rtol=1e-4, msg=lambda m: f"{path} {cfg}: {m}")
