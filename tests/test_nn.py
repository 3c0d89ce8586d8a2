"""natten_mps.nn modules: upstream NATTEN 0.21's arguments and parameter names, GQA, attn_drop."""
import pytest
import torch

import natten_mps
from natten_mps.nn import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from reference import reference_na

MODULES = {1: NeighborhoodAttention1D, 2: NeighborhoodAttention2D, 3: NeighborhoodAttention3D}
SHAPES = {1: (11,), 2: (7, 6), 3: (5, 4, 6)}


def by_hand(m, x):
    """The module's computation written out with the float64 reference."""
    B, *spatial, C = x.shape
    x64 = x.double()
    if m.num_kv_heads == m.num_heads:
        qkv = torch.nn.functional.linear(x64, m.qkv.weight.double(), m.qkv.bias.double())
        q, k, v = qkv.reshape(B, *spatial, 3, m.num_heads, m.head_dim).unbind(-3)
    else:
        q = torch.nn.functional.linear(x64, m.q_proj.weight.double(), m.q_proj.bias.double())
        q = q.reshape(B, *spatial, m.num_heads, m.head_dim)
        kv = torch.nn.functional.linear(x64, m.kv_proj.weight.double(), m.kv_proj.bias.double())
        k, v = kv.reshape(B, *spatial, 2, m.num_kv_heads, m.head_dim).unbind(-3)
    out, _ = reference_na(q, k, v, m.kernel_size, m.stride, m.dilation, m.is_causal, scale=m.scale)
    return torch.nn.functional.linear(out.reshape(B, *spatial, C), m.proj.weight.double(), m.proj.bias.double())


@pytest.mark.parametrize("path", ["pure", "metal"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_module_matches_reference(rank, kv_heads, path):
    natten_mps.set_emulation(path == "metal")
    torch.manual_seed(rank)
    m = MODULES[rank](32, 4, 3, stride=(2,) + (1,) * (rank - 1), dilation=(1,) * (rank - 1) + (2,),
                      is_causal=(True,) + (False,) * (rank - 1), num_kv_heads=kv_heads).eval()
    x = torch.randn(2, *SHAPES[rank], 32, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), by_hand(m, x.detach()), atol=2e-5, rtol=2e-5)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and m.proj.weight.grad is not None
    names = set(dict(m.named_parameters()))
    assert names == ({"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"} if kv_heads is None else
                     {"q_proj.weight", "q_proj.bias", "kv_proj.weight", "kv_proj.bias", "proj.weight", "proj.bias"})


def test_upstream_state_dict_layout_loads():
    """A state_dict with upstream NATTEN 0.21's names and shapes (qkv: [3C, C], proj: [C, C]) loads."""
    m = NeighborhoodAttention2D(16, 2, (3, 5), qkv_bias=False)
    state = {"qkv.weight": torch.randn(48, 16), "proj.weight": torch.randn(16, 16), "proj.bias": torch.randn(16)}
    m.load_state_dict(state)
    assert torch.equal(m.qkv.weight, state["qkv.weight"]) and m.qkv.bias is None
    assert m(torch.randn(1, 6, 7, 16)).shape == (1, 6, 7, 16)


def test_attention_dropout():
    torch.manual_seed(0)
    m = NeighborhoodAttention1D(16, 2, 5, dilation=2, attn_drop=0.5)
    x = torch.randn(2, 20, 16)
    m.eval()
    fused = m(x)
    m.train()
    m.attn_drop.p = 0.0                     # the explicit-weights path itself equals the fused kernels
    torch.testing.assert_close(m(x), fused, atol=1e-5, rtol=1e-5)
    m.attn_drop.p = 0.5
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    b = m(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, fused)
    a.sum().backward()


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="divide embed_dim"):
        NeighborhoodAttention1D(30, 4, 3)
    with pytest.raises(ValueError, match="num_kv_heads"):
        NeighborhoodAttention1D(32, 4, 3, num_kv_heads=3)
    with pytest.raises(ValueError, match="kernel_size must have 2 entries"):
        NeighborhoodAttention2D(32, 4, (3, 3, 3))
    m = NeighborhoodAttention2D(32, 4, 3)
    with pytest.raises(ValueError, match="expects"):
        m(torch.randn(2, 8, 32))
    with pytest.raises(ValueError, match="embed_dim 32"):
        m(torch.randn(2, 8, 8, 16))



@pytest.mark.skipif(not __import__("importlib").util.find_spec("natten"), reason="upstream natten not installed")
@pytest.mark.parametrize("rank", [1, 2])
def test_same_outputs_as_upstream_modules(rank):
    """An upstream module's state_dict loads into ours and gives the same outputs."""
    import natten
    torch.manual_seed(3)
    up = getattr(natten, f"NeighborhoodAttention{rank}D")(16, 2, 3, dilation=2).eval()
    ours = MODULES[rank](16, 2, 3, dilation=2).eval()
    ours.load_state_dict(up.state_dict())
    x = torch.randn(1, *SHAPES[rank], 16)
    with torch.no_grad():                  # upstream's CPU (flex) backend has no backward
        torch.testing.assert_close(ours(x), up(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("flags", [[], ["--checkpoint"], ["--compile"]])
def test_training_example_runs_and_learns(tmp_path, flags):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "train_char_na.py")
    spec = importlib.util.spec_from_file_location("train_char_na", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    png = tmp_path / "loss.png"
    steps = 40 if not flags else 4
    res = mod.main(["--steps", str(steps), "--batch", "8", "--seq", "64", "--dim", "32", "--layers", "1",
                    "--kernel-size", "9", "--corpus-bytes", "200000", "--device", "cpu", "--out", str(png)] + flags)
    assert len(res["losses"]) == steps and all(torch.isfinite(torch.tensor(res["losses"])))
    assert png.read_bytes()[:4] == b"\x89PNG"
    if not flags:
        assert sum(res["losses"][-5:]) / 5 < res["losses"][0] - 1.0     # it learns: well below log(256)


def test_merge_module_is_the_public_merge():
    from natten_mps import merge
    assert merge.merge_attentions is natten_mps.merge_attentions
