"""Client models written against upstream NATTEN, run unmodified through the ``natten`` alias.

Each ``check_<model>(version)`` expects the alias of ``version`` to be installed (by
``natten_mps.install_as_natten`` or by ``python -m natten_mps.as_natten``), imports the vendored
model code under tests/clients/<model>/ afresh, builds it with small random float64 weights, runs
forward and backward, then runs the same model code with NATTEN's functions replaced by the
brute-force float64 stand-ins of natten_reference.py, and returns the largest absolute differences
of the outputs and of the gradients (inputs and parameters). ``run_client.py`` calls them from the
command line.
"""
import contextlib
import importlib
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # tests/ (reference.py)
import natten_reference as ref  # noqa: E402

F64 = torch.float64
PACKAGES = {"allin1": "allin1", "k_diffusion": "k_diffusion", "naf": "src", "natten_fwd_ad": "src"}


@contextlib.contextmanager
def vendored(model):
    """Put tests/clients/<model> first on sys.path; forget its modules afterwards."""
    root = os.path.join(HERE, model)
    top = PACKAGES[model]
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]


def randomize(module, seed, std=0.3):
    """Random weights (zero-initialised layers would hide the attention); parameters named
    ``scale`` stay positive (k-diffusion takes their square root)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std
            p.copy_(r.abs() + 0.5 if name.split(".")[-1] == "scale" else r)


def rand(*shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_()


def forward_backward(fn, leaves, seed=99, backward=True):
    """Output and gradients of sum(out * w) (fixed random w) w.r.t. ``leaves`` (forward only when
    not ``backward``: upstream NATTEN's CPU path has no backward)."""
    if not backward:
        with torch.no_grad():
            return fn().detach(), []
    out = fn()
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(out.dtype)
    grads = torch.autograd.grad((out * w).sum(), leaves, allow_unused=True)
    return out.detach(), [None if g is None else g.detach() for g in grads]


def differences(a, b, reference_ran=True):
    """Largest differences of outputs and gradients; ``reference_ran``: the stand-ins were called."""
    assert reference_ran, "the reference run did not reach the stand-in functions"
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert out_a.shape == out_b.shape, (out_a.shape, out_b.shape)
    assert torch.isfinite(out_a).all() and torch.isfinite(out_b).all()
    assert len(grads_a) == len(grads_b)
    grad_err = 0.0
    for ga, gb in zip(grads_a, grads_b):
        assert (ga is None) == (gb is None)
        if ga is not None:
            assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
            grad_err = max(grad_err, (ga.double() - gb.double()).abs().max().item())
    return {"out": (out_a.double() - out_b.double()).abs().max().item(), "grad": grad_err,
            "out_scale": out_b.abs().max().item()}


def stand_ins_ran(before):
    return sum(ref.CALLS.values()) > before


UPSTREAM_CALLS = [0]


def upstream_ran():
    return UPSTREAM_CALLS[0] > 0


@contextlib.contextmanager
def patched(obj, **attrs):
    old = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


@contextlib.contextmanager
def genuine_natten():
    """Swap the alias out and the genuine NATTEN that ``install_as_natten(replace=True)`` set aside
    back in (its torch.compile'd paths re-import ``natten.*`` by name); yields that ``natten``."""
    from natten_mps.natten_alias import installed_natten_alias
    finder = installed_natten_alias()
    assert finder is not None and "natten" in finder.set_aside, "needs install_as_natten(..., replace=True)"
    ours = lambda n: n == "natten" or n.startswith("natten.")  # noqa: E731
    sys.meta_path.remove(finder)
    alias = {n: sys.modules.pop(n) for n in [n for n in sys.modules if ours(n)]}
    sys.modules.update(finder.set_aside)
    try:
        yield sys.modules["natten"]
    finally:
        for n in [n for n in sys.modules if ours(n)]:
            finder.set_aside[n] = sys.modules.pop(n)
        sys.modules.update(alias)
        sys.meta_path.insert(0, finder)


def upstream_na2d(*args, **kwargs):
    """Genuine NATTEN 0.21's na2d (CPU: flex backend), run with the alias swapped out."""
    UPSTREAM_CALLS[0] += 1
    args = [a.detach() if torch.is_tensor(a) else a for a in args]       # forward only (no CPU backward)
    with genuine_natten() as natten:
        return natten.na2d(*args, **kwargs)


# ---- All-In-One (NATTEN 0.14 natten1dqkrpb / natten1dav / natten2dqkrpb / natten2dav) -------------
def check_allin1(version, dtype=F64):
    with vendored("allin1"):
        dinat = importlib.import_module("allin1.models.dinat")
        from allin1.config import Config
        cfg = Config(drop_attention=0.0, drop_hidden=0.0)

        def build():
            torch.manual_seed(0)
            return (dinat.DinatLayer1d(cfg, 8, 2, 5, 2, 0.0, True).to(dtype),
                    dinat.DinatLayer2d(cfg, 8, 2, 3, 1, 0.0).to(dtype))

        x1, x2 = rand(2, 13, 8, seed=1, dtype=dtype), rand(1, 5, 6, 8, seed=2, dtype=dtype)

        def run(layers):
            l1, l2 = layers
            randomize(l1, 3)
            randomize(l2, 4)
            leaves = [x1, x2, *l1.parameters(), *l2.parameters()]
            return forward_backward(lambda: torch.cat([l1(x1)[0].flatten(), l2(x2)[0].flatten()]), leaves)

        got = run(build())
        upstream, before = False, sum(ref.CALLS.values())

        def qk(q, k, rpb, ks, d):
            return ref.split_qk(q, k, ks, d, rpb=rpb).to(q.dtype)

        def av(a, v, ks, d):
            return ref.split_av(a, v, ks, d).to(v.dtype)

        with patched(dinat, natten1dqkrpb=qk, natten2dqkrpb=qk, natten1dav=av, natten2dav=av):
            want = run(build())
        return differences(got, want, upstream_ran() if upstream else stand_ins_ran(before))


# ---- k-diffusion's hourglass transformer (NATTEN 0.17: has_fused_na probe, fused or split) ---------
def check_k_diffusion(version, fused=True, upstream=False):
    """``fused``: what ``natten.has_fused_na()`` answers (patched to False to take the split path).
    ``upstream``: use genuine NATTEN 0.21's ``na2d`` (set aside by ``install_as_natten(...,
    replace=True)``) as the reference instead of the brute force (float32, forward only)."""
    os.environ.setdefault("K_DIFFUSION_USE_COMPILE", "0")
    with vendored("k_diffusion"):
        itv2 = importlib.import_module("k_diffusion.models.image_transformer_v2")
        from k_diffusion.models.axial_rope import make_axial_pos
        dtype = torch.float32 if upstream else F64
        torch.manual_seed(0)
        layer = itv2.NeighborhoodTransformerLayer(d_model=16, d_ff=32, d_head=8, cond_features=4,
                                                  kernel_size=3).to(dtype)
        randomize(layer, 5)
        x, cond = rand(2, 6, 7, 16, seed=6, dtype=dtype), rand(2, 4, seed=7, dtype=dtype)
        pos = make_axial_pos(6, 7, dtype=dtype).view(6, 7, 2)
        leaves = [x, cond, *layer.parameters()]
        alias = itv2.natten
        assert alias.has_fused_na() is True
        backward = not upstream
        with patched(alias, has_fused_na=lambda: fused):
            got = forward_backward(lambda: layer(x, pos, cond), leaves, backward=backward)
        before, UPSTREAM_CALLS[0] = sum(ref.CALLS.values()), 0
        if upstream:
            functional = types.SimpleNamespace(na2d=upstream_na2d)
        else:
            functional = types.SimpleNamespace(na2d=ref.fused, na2d_qk=ref.split_qk, na2d_av=ref.split_av)
        with patched(itv2, natten=types.SimpleNamespace(has_fused_na=lambda: fused, functional=functional)):
            want = forward_backward(lambda: layer(x, pos, cond), leaves, backward=backward)
        return differences(got, want, upstream_ran() if upstream else stand_ins_ran(before))


# ---- NAF (NATTEN 0.20/0.21 na2d with stride and backend; 0.17 split ops otherwise) -----------------
def check_naf(version, upstream=False, dtype=F64):
    with vendored("naf"):
        attentions = importlib.import_module("src.layers.attentions")
        recent = attentions.NATTEN_RECENT
        expected = int(version.split(".")[1]) >= 20
        assert recent == expected, f"NAF took NATTEN_RECENT={recent} under NATTEN {version}"
        dtype = torch.float32 if upstream else dtype
        layer = attentions.CrossAttention(dim=16, num_heads=2, kernel_size=(3, 3))
        q, k, v = rand(2, 16, 6, 6, seed=8, dtype=dtype), rand(2, 16, 3, 3, seed=9, dtype=dtype), \
            rand(2, 16, 3, 3, seed=10, dtype=dtype)
        backward = not upstream
        got = forward_backward(lambda: layer(q, k, v), [q, k, v], backward=backward)
        before, UPSTREAM_CALLS[0] = sum(ref.CALLS.values()), 0
        assert layer.dilation == (2, 2)

        def ref_na2d(q, k, v, kernel_size, dilation, stride, backend):
            assert stride == 1 and backend == "cutlass-fna"
            if upstream:
                return upstream_na2d(q, k, v, kernel_size=kernel_size, dilation=dilation, stride=stride)
            return ref.fused(q, k, v, kernel_size, dilation).to(q.dtype)

        if recent:
            with patched(attentions, na2d=ref_na2d):
                want = forward_backward(lambda: layer(q, k, v), [q, k, v], backward=backward)
        else:
            with patched(attentions, na2d_qk=lambda q, k, kernel_size, dilation: ref.split_qk(q, k, kernel_size,
                                                                                             dilation),
                         na2d_av=lambda a, v, kernel_size, dilation: ref.split_av(a, v, kernel_size, dilation)):
                want = forward_backward(lambda: layer(q, k, v), [q, k, v])
        return differences(got, want, upstream_ran() if upstream else stand_ins_ran(before))


# ---- natten-fwd-ad blocks (0.17 probe + fused/split; 0.15/0.17 split ops with extra tokens) -----
def check_natten_fwd_ad(version):
    with vendored("natten_fwd_ad"):
        registers_block = importlib.import_module("src.natten_registers_block")
        torch.manual_seed(0)
        reg = registers_block.NattenRegistersBlock(16, 8, 3).double()
        randomize(reg, 11)
        x, registers = rand(2, 5, 6, 16, seed=12), rand(3, 16, seed=13)
        blocks = [lambda: reg(x, registers)]
        params = list(reg.parameters())
        has_probe = hasattr(sys.modules["natten"], "has_fused_na")
        if has_probe:
            natten_block = importlib.import_module("src.natten_block")
            fused_block, split_block = natten_block.NattenBlock(16, 8, 3), natten_block.NattenBlock(16, 8, 3, False)
            for b in (fused_block, split_block):
                b.double()
                randomize(b, 14)
                params += list(b.parameters())
            blocks += [lambda: fused_block(x), lambda: split_block(x)]
        leaves = [x, registers, *params]

        def run():
            return torch.cat([f().flatten() for f in blocks])

        got = forward_backward(run, leaves)
        upstream, before = False, sum(ref.CALLS.values())
        functional = sys.modules["natten.functional"]
        with patched(registers_block, na2d_qk=ref.split_qk, na2d_av=ref.split_av):
            if has_probe:
                with patched(functional, na2d=ref.fused, na2d_qk=ref.split_qk, na2d_av=ref.split_av):
                    want = forward_backward(run, leaves)
            else:
                want = forward_backward(run, leaves)
        return differences(got, want, upstream_ran() if upstream else stand_ins_ran(before))


CHECKS = {"allin1": check_allin1, "k_diffusion": check_k_diffusion, "naf": check_naf,
          "natten_fwd_ad": check_natten_fwd_ad}
