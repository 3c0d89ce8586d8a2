"""has_mps / has_metal / get_support_matrix agree with what the ops actually dispatch; NATTEN_BACKEND."""
import os
import subprocess
import sys

import pytest
import torch

import natten_mps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_availability_on_this_machine():
    assert natten_mps.has_mps() == (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    assert natten_mps.has_metal() == (natten_mps.has_mps() and hasattr(torch.mps, "compile_shader"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_matrix_matches_the_dispatch(emulate, rank, dtype):
    matrix = natten_mps.get_support_matrix()["metal"]
    name = str(dtype).replace("torch.", "")
    fn = {1: natten_mps.na1d, 2: natten_mps.na2d, 3: natten_mps.na3d}[rank]
    q = torch.randn(1, *(5,) * rank, 2, 8, dtype=dtype, requires_grad=True)
    out = fn(q, q, q, 3)
    assert (natten_mps.last_backend() == "metal") == matrix["ops"][f"na{rank}d_forward"][name]
    out.float().sum().backward()
    assert (natten_mps.last_backend() == "metal") == matrix["ops"][f"na{rank}d_backward"][name]
    xk = torch.randn(1, 2, 2, 8, dtype=dtype)
    fn(q, q, q, 3, additional_keys=xk, additional_values=xk)
    assert (natten_mps.last_backend() == "metal") == matrix["ops"][f"na{rank}d_additional_kv"][name]
    sizes = torch.full((1,) if rank == 1 else (1, rank), 5)
    getattr(natten_mps, f"na{rank}d_varlen")(q, q, q, sizes, 3)
    assert (natten_mps.last_backend() == "metal") == matrix["ops"][f"na{rank}d_varlen"][name]
    w = getattr(natten_mps, f"na{rank}d_qk")(q, q, 3)
    assert (natten_mps.last_backend() == "metal") == matrix["ops"][f"na{rank}d_qk"][name]
    getattr(natten_mps, f"na{rank}d_av")(w, q, 3)
    assert (natten_mps.last_backend() == "metal") == matrix["ops"][f"na{rank}d_av"][name]


def test_matrix_features_match_the_dispatch(emulate):
    features = natten_mps.get_support_matrix()["metal"]["features"]
    for dim, key in ((256, "head_dim_256"), (512, "head_dim_512")):
        q = torch.randn(1, 6, 1, dim)
        natten_mps.na1d(q, q, q, 3)
        assert (natten_mps.last_backend() == "metal") == features[key]
    q, k = torch.randn(1, 6, 4, 8), torch.randn(1, 6, 1, 8)
    natten_mps.na1d(q, k, k, 3)
    assert (natten_mps.last_backend() == "metal") == features["mqa"]
    cross = natten_mps.get_support_matrix()["metal"]["ops"]["attention_causal_cross"]["float32"]
    natten_mps.attention(torch.randn(1, 5, 2, 8), torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 8))
    assert natten_mps.last_backend() == "metal"
    natten_mps.attention(torch.randn(1, 5, 2, 8), torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 8), is_causal=True)
    assert (natten_mps.last_backend() == "metal") == cross


@pytest.mark.parametrize("env,expected", [({"NATTEN_BACKEND": "pure"}, "pure"),
                                          ({"NATTEN_BACKEND": "pure", "NATTEN_MPS_BACKEND": "auto"}, "auto")])
def test_natten_backend_alias(env, expected):
    full = {k: v for k, v in os.environ.items() if not k.startswith("NATTEN")}
    full.update(env, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", "import natten_mps; print(natten_mps.get_backend())"],
                         capture_output=True, text=True, env=full, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == expected
    full["NATTEN_BACKEND"] = "gpu"
    full.pop("NATTEN_MPS_BACKEND", None)
    bad = subprocess.run([sys.executable, "-c", "import natten_mps"], capture_output=True, text=True, env=full, cwd=ROOT)
    assert bad.returncode != 0 and "NATTEN_BACKEND must be one of" in bad.stderr
