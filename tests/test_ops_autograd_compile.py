"""The ops train and compile: opcheck, gradcheck, torch.compile(fullgraph=True), checkpointing."""
import pytest
import torch
from torch.utils.checkpoint import checkpoint

import natten_mps
import sage_mps
from natten_mps import ops


def _na_args(dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 5, 2, 4, generator=g, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(1, 6, 5, 1, 4, generator=g, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(1, 6, 5, 1, 3, generator=g, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


@pytest.mark.parametrize("path", ["pure", "metal"])
def test_opcheck_every_op(path):
    natten_mps.set_emulation(path == "metal")
    q, k, v = _na_args(requires_grad=True)
    params = ([3, 2], [2, 1], [1, 2], [False, True], 0.5)
    torch.library.opcheck(ops.na_forward, (q, k, v, *params))
    out, lse = ops.na_forward(q, k, v, *params)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    for g_lse in (dlse, None):   # the LSE gradient is optional (None: the loss does not use the LSE)
        torch.library.opcheck(ops.na_backward, (dout, g_lse, q.detach(), k.detach(), v.detach(), out.detach(),
                                                lse.detach(), *params))
    dq, _, _ = ops.na_backward(dout, None, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), *params)
    dq0, _, _ = ops.na_backward(dout, torch.zeros_like(lse), q.detach(), k.detach(), v.detach(), out.detach(),
                                lse.detach(), *params)
    torch.testing.assert_close(dq, dq0)
    qa, ka, va = q.flatten(1, 2), k.flatten(1, 2)[:, :7], v.flatten(1, 2)[:, :7]
    torch.library.opcheck(ops.attention_forward, (qa, ka, va, False, 0.3))
    o, l = ops.attention_forward(qa, ka, va, False, 0.3)
    for g_lse in (torch.randn_like(l), None):
        torch.library.opcheck(ops.attention_backward, (torch.randn_like(o), g_lse, qa.detach(), ka.detach(),
                                                       va.detach(), o.detach(), l.detach(), False, 0.3))
    g = torch.Generator().manual_seed(5)
    xk = torch.randn(1, 3, k.shape[-2], k.shape[-1], generator=g, requires_grad=True)
    xv = torch.randn(1, 3, v.shape[-2], v.shape[-1], generator=g, requires_grad=True)
    torch.library.opcheck(ops.na_forward_extra, (q, k, v, xk, xv, *params))
    o, l = ops.na_forward_extra(q, k, v, xk, xv, *params)
    for g_lse in (torch.randn_like(l), None):
        torch.library.opcheck(ops.na_backward_extra, (torch.randn_like(o), g_lse, q.detach(), k.detach(), v.detach(),
                                                      xk.detach(), xv.detach(), o.detach(), l.detach(), *params))


def test_gradcheck_float64():
    natten_mps.set_backend("pure")
    q, k, v = _na_args(torch.float64, requires_grad=True)
    ak = torch.randn(1, 2, 1, 4, dtype=torch.float64, requires_grad=True)
    av = torch.randn(1, 2, 1, 3, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, ak, av):
        out, lse = natten_mps.na2d(q, k, v, (3, 2), stride=(2, 1), dilation=(1, 2), is_causal=(False, True),
                                   additional_keys=ak, additional_values=av, return_lse=True)
        return out, lse

    assert torch.autograd.gradcheck(f, (q, k, v, ak, av), eps=1e-6, atol=1e-6)
    qa = torch.randn(1, 5, 2, 4, dtype=torch.float64, requires_grad=True)
    ka = torch.randn(1, 5, 1, 4, dtype=torch.float64, requires_grad=True)
    va = torch.randn(1, 5, 1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: natten_mps.attention(a, b, c, is_causal=True, return_lse=True),
                                    (qa, ka, va), eps=1e-6, atol=1e-6)


class TinyModel(torch.nn.Module):
    """Calls na2d, na1d with additional KV, merge_attentions and sageattn."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 3 * 8)

    def forward(self, x):  # x [B, H, W, 8]
        B, Hh, W, C = x.shape
        q, k, v = self.proj(x).reshape(B, Hh, W, 3, 2, 4).unbind(3)
        y2 = natten_mps.na2d(q, k, v, 3, dilation=(1, 2))
        q1, k1, v1 = (t.reshape(B, Hh * W, 2, 4) for t in (q, k, v))
        y1, l1 = natten_mps.na1d(q1, k1, v1, 5, is_causal=True, additional_keys=k1[:, :2],
                                 additional_values=v1[:, :2], return_lse=True)
        y1b, l1b = natten_mps.na1d(q1, k1, v1, 3, return_lse=True)
        merged, _ = natten_mps.merge_attentions([y1, y1b], [l1, l1b])
        sage = sage_mps.sageattn(q1, k1, v1, tensor_layout="NHD")
        return y2.reshape(B, Hh * W, 2, 4) + merged + sage


@pytest.mark.parametrize("path", ["pure", "metal"])
def test_compile_fullgraph_forward_and_backward(path):
    natten_mps.set_emulation(path == "metal")
    torch._dynamo.reset()
    model = TinyModel()
    x = torch.randn(2, 6, 8, 8)
    eager = model(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", ["pure", "metal"])
def test_checkpoint_same_gradients(path):
    natten_mps.set_emulation(path == "metal")
    model = TinyModel()
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    model(x).square().sum().backward()
    ref = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    checkpoint(model, x, use_reentrant=False).square().sum().backward()
    got = [p.grad for p in model.parameters()] + [x.grad]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_compile_fullgraph_inductor_pure_path():
    """The default (inductor) backend compiles forward and backward around the opaque ops."""
    natten_mps.set_backend("pure")
    torch._dynamo.reset()
    model = TinyModel()
    x = torch.randn(1, 6, 8, 8)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    assert all(p.grad is not None for p in model.parameters())


def test_eager_entry_equals_registered_op():
    """The public API's eager route (autograd.Function around the same implementations) gives the
    registered op's values and gradients, for neighborhood and dense attention."""
    natten_mps.set_backend("pure")
    q, k, v = _na_args(torch.float64, requires_grad=True)
    params = ([3, 2], [2, 1], [1, 2], [False, True], 0.5)
    qa, ka, va = q.flatten(1, 2), k.flatten(1, 2)[:, :7], v.flatten(1, 2)[:, :7]
    cases = [(ops.neighborhood_attention, ops.na_forward, (q, k, v), params),
             (ops.dense_attention, ops.attention_forward, (qa, ka, va), (True, 0.3))]
    for eager_fn, op, tensors, rest in cases:
        assert ops._eager(*tensors)
        results = []
        for fn in (eager_fn, op):
            leaves = [t.detach().clone().requires_grad_() for t in tensors]
            out, lse = fn(*leaves, *rest)
            (out.square().sum() + lse.sin().sum()).backward()
            results.append([out, lse] + [t.grad for t in leaves])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_compiled_graph_holds_the_registered_ops():
    """Under torch.compile the public API calls the opaque custom ops (not the eager route)."""
    natten_mps.set_backend("pure")
    torch._dynamo.reset()
    seen = []

    def record(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def fn(q, k, v, ak, av):
        return natten_mps.na1d(q, k, v, 3, additional_keys=ak, additional_values=av)

    q = torch.randn(1, 9, 2, 4)
    ak = torch.randn(1, 2, 2, 4)
    torch.compile(fn, backend=record, fullgraph=True)(q, q, q, ak, ak)
    assert any("natten_mps.na_forward_extra" in t for t in seen), seen     # NA + additional keys: one op
    seen.clear()
    torch._dynamo.reset()
    torch.compile(lambda q: natten_mps.na1d(q, q, q, 3) + natten_mps.attention(q, q, q), backend=record,
                  fullgraph=True)(q)
    assert any(t.startswith("natten_mps.na_forward.") for t in seen), seen
    assert any("natten_mps.attention_forward" in t for t in seen), seen
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        assert not ops._eager(torch.empty(1, 9, 2, 4))


def test_without_mode_probes_every_call_takes_the_registered_op(monkeypatch):
    """If torch's private mode probes are missing, the public API still works, through the ops."""
    natten_mps.set_backend("pure")
    q = torch.randn(1, 9, 2, 4, requires_grad=True)
    expected = natten_mps.na1d(q, q, q, 3)
    monkeypatch.setattr(ops, "_MODE_PROBES", None)
    assert not ops._eager(q)
    out = natten_mps.na1d(q, q, q, 3)
    torch.testing.assert_close(out, expected)
    assert out.grad_fn is not None and "EagerOp" not in type(out.grad_fn).__name__
    out.sum().backward()
    assert q.grad is not None


# ---- fitting into PyTorch: autocast, double backward, vmap ------------------------------------
@pytest.mark.parametrize("path", ["pure", "metal"])
def test_autocast_follows_sdpa(path):
    """Under torch.autocast inputs are cast to the autocast dtype (mixed dtypes accepted), as SDPA does."""
    natten_mps.set_emulation(path == "metal")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, 2, 8, generator=g)
    k = torch.randn(2, 12, 2, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = natten_mps.na1d(q, k.half(), k, 3)                 # fp32, fp16, fp32: accepted
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, k)
        dense = natten_mps.attention(q, k, k)
        sage = sage_mps.sageattn(q.transpose(1, 2), k.transpose(1, 2), k.transpose(1, 2))
    assert out.dtype == sdpa.dtype == dense.dtype == sage.dtype == torch.bfloat16
    expected = natten_mps.na1d(q.bfloat16(), k.half().bfloat16(), k.bfloat16(), 3)
    torch.testing.assert_close(out, expected)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        natten_mps.na1d(q, k.half(), k, 3)                       # outside autocast: refused


def test_double_backward_is_a_clear_error():
    natten_mps.set_backend("pure")
    x = torch.randn(1, 10, 2, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(natten_mps.na1d(x, x, x, 3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(natten_mps.attention(x, x, x).sum(), x, create_graph=True)
    g, = torch.autograd.grad(natten_mps.na1d(x, x, x, 3).sum(), x)     # first order still works
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("path", ["pure", "metal"])
def test_vmap_over_a_leading_batch(path):
    natten_mps.set_emulation(path == "metal")
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 2, 7, 6, 2, 8, generator=g)               # vmapped dim, then [B, X, Y, H, D]
    kv = torch.randn(2, 7, 6, 1, 8, generator=g)                 # not vmapped (broadcast), GQA
    xk = torch.randn(3, 2, 2, 1, 8, generator=g)

    def f(q, xk):
        out, lse = natten_mps.na2d(q, kv, kv, (3, 2), dilation=(2, 1), additional_keys=xk, additional_values=xk,
                                   return_lse=True)
        return out, lse, natten_mps.attention(q.flatten(1, 2), kv.flatten(1, 2), kv.flatten(1, 2))

    got = torch.vmap(f)(q, xk)
    want = [torch.stack(t) for t in zip(*(f(q[i], xk[i]) for i in range(3)))]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="torch.func.grad"):      # func transforms other than vmap: refused
        torch.func.grad(lambda t: natten_mps.na2d(t, t, t, 3).sum())(q[0])
