"""The op registry: ``torch.library`` custom ops with fake (meta) kernels and registered autograd.

Each op picks its device implementation (``backends.metal`` or ``backends.pure``) through
:mod:`natten_mps.backend`. Being opaque custom ops, they compile under ``torch.compile(fullgraph=True)``
without graph breaks and recompute nothing under checkpointing beyond what the backward op needs
(saved inputs, output and LSE). Public functions call :func:`neighborhood_attention` and
:func:`dense_attention` (end of this module): the registered ops under compile/tracing, and in
plain eager mode the same implementations behind a lighter ``autograd.Function``.

Ops (all tensors heads-last):

* ``natten_mps::na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale) -> (out, lse)``
* ``natten_mps::na_backward(dout, dlse?, q, k, v, out, lse, ...) -> (dq, dk, dv)``  (``dlse`` None: zero)
* ``natten_mps::na_forward_extra(q, k, v, xk, xv, ...) -> (out, lse)``  (NA plus additional keys/values
  ``[B, E, Hkv, D|Dv]`` every query attends to; on Metal one fused dispatch)
* ``natten_mps::na_backward_extra(dout, dlse?, q, k, v, xk, xv, out, lse, ...) -> (dq, dk, dv, dxk, dxv)``
* ``natten_mps::na_varlen_forward(q, k, v, sizes, ...) -> (out, lse)``  (per-sample extents ``sizes``
  ``[B, rank]`` in a padded batch; padding zero; on Metal one launch for the whole batch)
* ``natten_mps::na_varlen_backward(dout, dlse?, q, k, v, sizes, out, lse, ...) -> (dq, dk, dv)``
* ``natten_mps::attention_forward(q, k, v, is_causal, scale) -> (out, lse)``  (dense; Lq may differ from Lk)
* ``natten_mps::split_qk(q, k, kernel_size, stride, dilation, is_causal) -> weights``,
  ``natten_mps::split_av(weights, v, ...) -> out``: the split ops' Metal kernels (explicit weights
  ``[B, *L, H, prod(kernel_size)]``, masked entries ``-inf``); the pure path of the split ops is
  plain PyTorch autograd (:mod:`natten_mps.split`).
* ``natten_mps::attention_backward(dout, dlse?, q, k, v, out, lse, is_causal, scale) -> (dq, dk, dv)``
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import backend
from .backends import metal, metal_split, pure, pure_varlen
from .metal import runtime


def _lse_dtype(dtype):
    return pure.lse_dtype(dtype)


def _on_metal(q, *tensors) -> bool:
    """``backend.use_metal`` for these tensors; the kernels' coverage (``metal.supported``) is only
    looked at where the path could be Metal (not under ``set_backend("pure")``, not on a device
    without Metal), where it cannot change the choice."""
    could = backend.get_backend() != "pure" and runtime.runs_metal(q)
    return backend.use_metal(q, could and metal.supported(q, *tensors))


def _na_forward_impl(q, k, v, kernel_size, stride, dilation, is_causal, scale):
    if _on_metal(q, k, v):
        return metal.na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale)
    return pure.na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale)


def _na_backward_impl(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale):
    if _on_metal(q, k, v):
        return metal.na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale)
    return pure.na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale)


def _flat(q):
    return q.reshape(q.shape[0], -1, q.shape[-2], q.shape[-1])


def _na_forward_extra_impl(q, k, v, xk, xv, kernel_size, stride, dilation, is_causal, scale):
    if _on_metal(q, k, v, xk, xv):
        return metal.attention_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale,
                                       extra_k=xk, extra_v=xv)
    # pure: the two attentions, merged by their LSE
    out1, lse1 = pure.na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale)
    out2, lse2 = pure.attention_forward(_flat(q), xk, xv, False, scale)
    lse = torch.logaddexp(lse1, lse2.reshape(lse1.shape))
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = (out1.to(acc) * torch.exp(lse1 - lse).unsqueeze(-1)
           + out2.reshape(out1.shape).to(acc) * torch.exp(lse2.reshape(lse1.shape) - lse).unsqueeze(-1))
    return out.to(q.dtype), lse


def _na_backward_extra_impl(dout, dlse, q, k, v, xk, xv, out, lse, kernel_size, stride, dilation, is_causal,
                            scale):
    if _on_metal(q, k, v, xk, xv):
        return metal.attention_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal,
                                        scale, extra_k=xk, extra_v=xv)
    # pure: each key set's gradients from the merged output and LSE (softmax over the union)
    dq1, dk, dv = pure.na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale)
    dq2, dxk, dxv = pure.attention_backward(_flat(dout), None if dlse is None else dlse.reshape(lse.shape[0], -1, lse.shape[-1]),
                                            _flat(q), xk, xv, _flat(out), lse.reshape(lse.shape[0], -1, lse.shape[-1]),
                                            False, scale)
    return dq1 + dq2.reshape(dq1.shape), dk, dv, dxk, dxv


def _na_varlen_forward_impl(q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale):
    if _on_metal(q, k, v):
        return metal.na_varlen_forward(q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale)
    return pure_varlen.na_varlen_forward(q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale)


def _na_varlen_backward_impl(dout, dlse, q, k, v, sizes, out, lse, kernel_size, stride, dilation, is_causal,
                             scale):
    """-> (dq, dk, dv, None): the last entry is the (absent) gradient of ``sizes``."""
    if _on_metal(q, k, v):
        dq, dk, dv, _, _ = metal.attention_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation,
                                                    is_causal, scale, sizes=sizes)
        return dq, dk, dv, None
    return pure_varlen.na_varlen_backward(dout, dlse, q, k, v, sizes, out, lse, kernel_size, stride, dilation,
                                          is_causal, scale)


def _dense_on_metal(q, k, v, is_causal) -> bool:
    """Whether the kernels cover this dense problem (any device; the support matrix asks this).
    Causal with Lq != Lk: key j is visible to queries i >= j (SDPA's top-left alignment), in both paths."""
    return metal.supported(q, k, v)


def _attention_forward_impl(q, k, v, is_causal, scale, contiguous=True):
    if _on_metal(q, k, v):      # coverage: _dense_on_metal
        return metal.dense_forward(q, k, v, is_causal, scale)
    return pure.attention_forward(q, k, v, is_causal, scale, contiguous)


def _attention_forward_eager(q, k, v, is_causal, scale):
    return _attention_forward_impl(q, k, v, is_causal, scale, contiguous=False)


def _attention_backward_impl(dout, dlse, q, k, v, out, lse, is_causal, scale):
    if _on_metal(q, k, v):      # coverage: _dense_on_metal
        return metal.dense_backward(dout, dlse, q, k, v, out, lse, is_causal, scale)
    return pure.attention_backward(dout, dlse, q, k, v, out, lse, is_causal, scale)


@torch.library.custom_op("natten_mps::na_forward", mutates_args=())
def na_forward(q: Tensor, k: Tensor, v: Tensor, kernel_size: List[int], stride: List[int],
               dilation: List[int], is_causal: List[bool], scale: float) -> Tuple[Tensor, Tensor]:
    return _na_forward_impl(q, k, v, kernel_size, stride, dilation, is_causal, scale)


@na_forward.register_fake
def _na_forward_fake(q, k, v, kernel_size, stride, dilation, is_causal, scale):
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    return out, q.new_empty(q.shape[:-1], dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("natten_mps::na_backward", mutates_args=())
def na_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                kernel_size: List[int], stride: List[int], dilation: List[int], is_causal: List[bool],
                scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    return _na_backward_impl(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale)


@na_backward.register_fake
def _na_backward_fake(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _refuse_double_backward():
    if torch.is_grad_enabled():
        raise RuntimeError("natten_mps: double backward (create_graph=True, gradients of gradients) is not "
                           "supported by the attention ops; compute first-order gradients only")


def _incoming(out, dout, dlse):
    """Gradients reaching (out, lse). An unused output's gradient arrives as None: a zero ``dout``
    becomes a stride-0 view, a zero ``dlse`` stays None. Any strides are fine: the backward
    implementations read strided views (``out.sum()`` sends a stride-0 ``dout``, not copied)."""
    dout = out.new_zeros(()).expand(out.shape) if dout is None else dout
    return dout, dlse


def _na_setup_context(ctx, inputs, output):
    q, k, v, kernel_size, stride, dilation, is_causal, scale = inputs
    out, lse = output
    ctx.set_materialize_grads(False)   # an unused output's gradient arrives as None
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = (kernel_size, stride, dilation, is_causal, scale)


def _na_backward_rule(ctx, dout, dlse):
    _refuse_double_backward()
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = na_backward(*_incoming(out, dout, dlse), q, k, v, out, lse, *ctx.params)
    return dq, dk, dv, None, None, None, None, None


na_forward.register_autograd(_na_backward_rule, setup_context=_na_setup_context)


@torch.library.custom_op("natten_mps::na_forward_extra", mutates_args=())
def na_forward_extra(q: Tensor, k: Tensor, v: Tensor, xk: Tensor, xv: Tensor, kernel_size: List[int],
                     stride: List[int], dilation: List[int], is_causal: List[bool],
                     scale: float) -> Tuple[Tensor, Tensor]:
    return _na_forward_extra_impl(q, k, v, xk, xv, kernel_size, stride, dilation, is_causal, scale)


@na_forward_extra.register_fake
def _na_forward_extra_fake(q, k, v, xk, xv, kernel_size, stride, dilation, is_causal, scale):
    return q.new_empty(q.shape[:-1] + (v.shape[-1],)), q.new_empty(q.shape[:-1], dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("natten_mps::na_backward_extra", mutates_args=())
def na_backward_extra(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, xk: Tensor,
                      xv: Tensor, out: Tensor, lse: Tensor, kernel_size: List[int], stride: List[int],
                      dilation: List[int], is_causal: List[bool],
                      scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _na_backward_extra_impl(dout, dlse, q, k, v, xk, xv, out, lse, kernel_size, stride, dilation,
                                   is_causal, scale)


@na_backward_extra.register_fake
def _na_backward_extra_fake(dout, dlse, q, k, v, xk, xv, out, lse, kernel_size, stride, dilation, is_causal, scale):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(xk),
            torch.empty_like(xv))


def _na_extra_setup_context(ctx, inputs, output):
    q, k, v, xk, xv, kernel_size, stride, dilation, is_causal, scale = inputs
    out, lse = output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, xk, xv, out, lse)
    ctx.params = (kernel_size, stride, dilation, is_causal, scale)


def _na_extra_backward_rule(ctx, dout, dlse):
    _refuse_double_backward()
    q, k, v, xk, xv, out, lse = ctx.saved_tensors
    grads = na_backward_extra(*_incoming(out, dout, dlse), q, k, v, xk, xv, out, lse, *ctx.params)
    return tuple(grads) + (None,) * 5


na_forward_extra.register_autograd(_na_extra_backward_rule, setup_context=_na_extra_setup_context)


@torch.library.custom_op("natten_mps::na_varlen_forward", mutates_args=())
def na_varlen_forward(q: Tensor, k: Tensor, v: Tensor, sizes: Tensor, kernel_size: List[int], stride: List[int],
                      dilation: List[int], is_causal: List[bool], scale: float) -> Tuple[Tensor, Tensor]:
    return _na_varlen_forward_impl(q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale)


@na_varlen_forward.register_fake
def _na_varlen_forward_fake(q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale):
    return _na_forward_fake(q, k, v, kernel_size, stride, dilation, is_causal, scale)


@torch.library.custom_op("natten_mps::na_varlen_backward", mutates_args=())
def na_varlen_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, sizes: Tensor,
                       out: Tensor, lse: Tensor, kernel_size: List[int], stride: List[int], dilation: List[int],
                       is_causal: List[bool], scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv, _ = _na_varlen_backward_impl(dout, dlse, q, k, v, sizes, out, lse, kernel_size, stride, dilation,
                                             is_causal, scale)
    return dq, dk, dv


@na_varlen_backward.register_fake
def _na_varlen_backward_fake(dout, dlse, q, k, v, sizes, out, lse, kernel_size, stride, dilation, is_causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _na_varlen_setup_context(ctx, inputs, output):
    q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale = inputs
    out, lse = output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, sizes, out, lse)
    ctx.params = (kernel_size, stride, dilation, is_causal, scale)


def _na_varlen_backward_rule(ctx, dout, dlse):
    _refuse_double_backward()
    q, k, v, sizes, out, lse = ctx.saved_tensors
    dq, dk, dv = na_varlen_backward(*_incoming(out, dout, dlse), q, k, v, sizes, out, lse, *ctx.params)
    return dq, dk, dv, None, None, None, None, None, None


na_varlen_forward.register_autograd(_na_varlen_backward_rule, setup_context=_na_varlen_setup_context)


@torch.library.custom_op("natten_mps::attention_forward", mutates_args=())
def attention_forward(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float) -> Tuple[Tensor, Tensor]:
    return _attention_forward_impl(q, k, v, is_causal, scale)


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, is_causal, scale):
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    return out, q.new_empty(q.shape[:-1], dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("natten_mps::attention_backward", mutates_args=())
def attention_backward(dout: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       is_causal: bool, scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    return _attention_backward_impl(dout, dlse, q, k, v, out, lse, is_causal, scale)


@attention_backward.register_fake
def _attention_backward_fake(dout, dlse, q, k, v, out, lse, is_causal, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _attn_setup_context(ctx, inputs, output):
    q, k, v, is_causal, scale = inputs
    out, lse = output
    ctx.set_materialize_grads(False)   # an unused output's gradient arrives as None
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = (is_causal, scale)


def _attn_backward_rule(ctx, dout, dlse):
    _refuse_double_backward()
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward(*_incoming(out, dout, dlse), q, k, v, out, lse, *ctx.params)
    return dq, dk, dv, None, None


attention_forward.register_autograd(_attn_backward_rule, setup_context=_attn_setup_context)


# ---- entry points for the public API ------------------------------------------------------------
# In plain eager mode the public functions reach the same implementations through a lighter
# ``torch.autograd.Function``: PyTorch's custom-op wrappers (schema default filling, dynamo guards,
# re-dispatch) cost ~0.1 ms per forward+backward, which is a tenth of a small 1-D problem. Under
# ``torch.compile``/tracing, with tensor subclasses (fake, functional) or an active dispatch mode,
# the registered ops above are called, so graphs hold one opaque op and the fake kernels apply.

def _mode_probes():
    """Callables telling whether a mode that must see the registered ops is active (private torch
    APIs, present in 2.8-2.13; if one is missing, every call takes the registered op)."""
    C = torch._C
    try:
        keys = [getattr(C._TorchDispatchModeKey, name) for name in ("FAKE", "FUNCTIONAL", "PROXY")]
        return [C._is_torch_function_mode_enabled] + [lambda key=key: C._get_dispatch_mode(key) is not None
                                                      for key in keys]
    except AttributeError:
        return None


_MODE_PROBES = _mode_probes()


def _functorch_active() -> bool:
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    return level is not None and level() is not None


def _refuse_func_grad(tensors) -> None:
    """torch.func.grad/vjp/jacrev cannot see through torch.library ops' autograd: say so clearly."""
    is_grad = getattr(torch._C._functorch, "is_gradtrackingtensor", None)
    if is_grad is not None and any(t is not None and is_grad(t) for t in tensors):
        raise RuntimeError("natten_mps: torch.func.grad / vjp / jacrev / jvp over the attention ops are not "
                           "supported; use torch.autograd (loss.backward() or torch.autograd.grad). "
                           "torch.func.vmap is supported")


def _eager(*tensors: Tensor) -> bool:
    if _functorch_active():
        _refuse_func_grad(tensors)
        return False
    if _MODE_PROBES is None or torch.compiler.is_compiling():
        return False
    for probe in _MODE_PROBES:
        if probe():
            return False
    for t in tensors:
        if type(t) is not Tensor or t.device.type == "meta":
            return False
    return True


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd must record the op (grad mode on and some input requires grad)."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t.requires_grad:
            return True
    return False




def plain_eager(*tensors: Tensor) -> bool:
    """Whether these are plain tensors in eager mode (no compile, functorch transform or dispatch
    mode), so that a caller may compute into buffers it keeps (``out=``)."""
    return _eager(*tensors)


class _EagerOp(torch.autograd.Function):
    """``forward(impl, backward_impl, n_tensors, *args)``: ``args[:n_tensors]`` are the tensor inputs
    (q, k, v and optional additional keys/values) and the rest the op's non-tensor arguments; same
    saved tensors and gradients as the registered op."""

    @staticmethod
    def forward(ctx, impl, backward_impl, n_tensors, *args):
        out, lse = impl(*args)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*args[:n_tensors], out, lse)
        ctx.backward_impl, ctx.params, ctx.n_args = backward_impl, args[n_tensors:], len(args)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        _refuse_double_backward()
        saved = ctx.saved_tensors
        inputs, out, lse = saved[:-2], saved[-2], saved[-1]
        grads = ctx.backward_impl(*_incoming(out, dout, dlse), *inputs, out, lse, *ctx.params)
        return (None, None, None) + tuple(grads) + (None,) * (ctx.n_args - len(inputs))


def _c_apply(function):
    """``function``'s C-level ``apply`` (torch._C._FunctionBase), or its Python ``apply`` where that
    private entry is missing."""
    base = getattr(torch._C, "_FunctionBase", None)
    method = None if base is None else base.__dict__.get("apply")
    return method.__get__(None, function) if hasattr(method, "__get__") else function.apply


_eager_op_apply = _c_apply(_EagerOp)


def _eager_apply(impl, backward_impl, n_tensors, *args):
    """One eager call of ``impl``: straight, when autograd has nothing to record; else through
    :class:`_EagerOp` (its C ``apply``: ``Function.apply``'s Python prologue binds defaults for
    ``setup_context`` and unwraps dead functorch wrappers, neither of which plain tensors need)."""
    if not _needs_grad(*args[:n_tensors]):
        return impl(*args)
    return _eager_op_apply(impl, backward_impl, n_tensors, *args)


def neighborhood_attention(q: Tensor, k: Tensor, v: Tensor, kernel_size: List[int], stride: List[int],
                           dilation: List[int], is_causal: List[bool], scale: float) -> Tuple[Tensor, Tensor]:
    """``natten_mps::na_forward`` with its autograd, as the public API calls it."""
    if _eager(q, k, v):
        return _eager_apply(_na_forward_impl, _na_backward_impl, 3, q, k, v, kernel_size, stride, dilation,
                            is_causal, scale)
    return na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale)


def neighborhood_attention_extra(q: Tensor, k: Tensor, v: Tensor, xk: Tensor, xv: Tensor, kernel_size: List[int],
                                 stride: List[int], dilation: List[int], is_causal: List[bool],
                                 scale: float) -> Tuple[Tensor, Tensor]:
    """``natten_mps::na_forward_extra`` with its autograd, as the public API calls it."""
    args = (q, k, v, xk, xv, kernel_size, stride, dilation, is_causal, scale)
    if _eager(q, k, v, xk, xv):
        return _eager_apply(_na_forward_extra_impl, _na_backward_extra_impl, 5, *args)
    return na_forward_extra(*args)


def neighborhood_attention_varlen(q: Tensor, k: Tensor, v: Tensor, sizes: Tensor, kernel_size: List[int],
                                  stride: List[int], dilation: List[int], is_causal: List[bool],
                                  scale: float) -> Tuple[Tensor, Tensor]:
    """``natten_mps::na_varlen_forward`` with its autograd, as the public API calls it."""
    args = (q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale)
    if _eager(q, k, v, sizes):
        return _eager_apply(_na_varlen_forward_impl, _na_varlen_backward_impl, 4, *args)
    return na_varlen_forward(*args)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float,
                    eager: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
    """``natten_mps::attention_forward`` with its autograd, as the public API calls it. ``eager``:
    :func:`plain_eager` of (q, k, v) when the caller already asked (None: ask here)."""
    if _eager(q, k, v) if eager is None else eager:
        return _eager_apply(_attention_forward_eager, _attention_backward_impl, 3, q, k, v, is_causal, scale)
    return attention_forward(q, k, v, is_causal, scale)


def dense_attention_heads_first(q: Tensor, k: Tensor, v: Tensor, is_causal: bool, scale: float,
                                eager: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
    """:func:`dense_attention` on heads-first tensors: ``q`` ``[B, H, Lq, D]``, ``k``/``v``
    ``[B, Hkv, Lk, D(v)]`` -> (out ``[B, H, Lq, Dv]``, lse ``[B, H, Lq]``), either possibly a strided
    view. An eager call off Metal with nothing to differentiate runs the CPU flash kernel straight
    on these tensors where it applies (no layout round trip); everything else is ``dense_attention``.
    ``eager``: :func:`plain_eager` of (q, k, v) when the caller already asked."""
    if eager is None:
        eager = _eager(q, k, v)
    if (not runtime.runs_metal(q) and not backend.use_metal(q, False) and eager
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        fast = pure.attention_forward_heads_first(q, k, v, is_causal, scale)
        if fast is not None:
            return fast
    out, lse = dense_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal, scale, eager)
    return out.transpose(1, 2), lse.transpose(1, 2)


# ---- torch.func.vmap: a vmapped dimension folds into the batch dimension ------------------------
def _fold_vmap(op, n_tensors, n_outputs):
    """vmap rule for an op whose first ``n_tensors`` arguments are tensors with a leading batch
    dimension (None allowed): move each vmapped dimension to the front, merge it with the batch,
    run the op once, split the batch again. Unbatched tensors are expanded along the vmapped size."""
    def rule(info, in_dims, *args):
        size = info.batch_size
        tensors, rest = list(args[:n_tensors]), args[n_tensors:]
        for i, (t, d) in enumerate(zip(tensors, in_dims[:n_tensors])):
            if t is None:
                continue
            t = t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(size, *t.shape)
            tensors[i] = t.reshape(size * t.shape[1], *t.shape[2:])
        outs = op(*tensors, *rest)
        outs = tuple(o.reshape(size, o.shape[0] // size, *o.shape[1:]) for o in outs)
        return outs, (0,) * n_outputs
    return rule


torch.library.register_vmap("natten_mps::na_forward", _fold_vmap(na_forward, 3, 2))
torch.library.register_vmap("natten_mps::na_forward_extra", _fold_vmap(na_forward_extra, 5, 2))
torch.library.register_vmap("natten_mps::attention_forward", _fold_vmap(attention_forward, 3, 2))
torch.library.register_vmap("natten_mps::na_varlen_forward", _fold_vmap(na_varlen_forward, 4, 2))
torch.library.register_vmap("natten_mps::na_varlen_backward", _fold_vmap(na_varlen_backward, 8, 3))
torch.library.register_vmap("natten_mps::na_backward", _fold_vmap(na_backward, 7, 3))
torch.library.register_vmap("natten_mps::na_backward_extra", _fold_vmap(na_backward_extra, 9, 5))
torch.library.register_vmap("natten_mps::attention_backward", _fold_vmap(attention_backward, 7, 3))


# ---- split ops on Metal (explicit attention weights) ---------------------------------------------
@torch.library.custom_op("natten_mps::split_qk", mutates_args=())
def split_qk(q: Tensor, k: Tensor, kernel_size: List[int], stride: List[int], dilation: List[int],
             is_causal: List[bool]) -> Tensor:
    return metal_split.qk(q, k, kernel_size, stride, dilation, is_causal)


@split_qk.register_fake
def _split_qk_fake(q, k, kernel_size, stride, dilation, is_causal):
    n = 1
    for x in kernel_size:
        n *= x
    return q.new_empty(q.shape[:-1] + (n,))


def _split_qk_backward_impl(dw, q, k, kernel_size, stride, dilation, is_causal):
    args = (kernel_size, stride, dilation, is_causal)
    dw = dw.to(q.dtype)
    return metal_split.av(dw, k, *args), metal_split.inverse(dw, q, k.shape[-2], *args)


@torch.library.custom_op("natten_mps::split_qk_backward", mutates_args=())
def split_qk_backward(dw: Tensor, q: Tensor, k: Tensor, kernel_size: List[int], stride: List[int],
                      dilation: List[int], is_causal: List[bool]) -> Tuple[Tensor, Tensor]:
    return _split_qk_backward_impl(dw, q, k, kernel_size, stride, dilation, is_causal)


@split_qk_backward.register_fake
def _split_qk_backward_fake(dw, q, k, kernel_size, stride, dilation, is_causal):
    return torch.empty_like(q), torch.empty_like(k)


def _split_qk_setup(ctx, inputs, output):
    q, k = inputs[:2]
    ctx.save_for_backward(q, k)
    ctx.params = tuple(inputs[2:])


def _split_qk_rule(ctx, dw):
    _refuse_double_backward()
    q, k = ctx.saved_tensors
    dq, dk = split_qk_backward(dw, q, k, *ctx.params)
    return dq, dk, None, None, None, None


split_qk.register_autograd(_split_qk_rule, setup_context=_split_qk_setup)


@torch.library.custom_op("natten_mps::split_av", mutates_args=())
def split_av(w: Tensor, v: Tensor, kernel_size: List[int], stride: List[int], dilation: List[int],
             is_causal: List[bool]) -> Tensor:
    return metal_split.av(w, v, kernel_size, stride, dilation, is_causal)


@split_av.register_fake
def _split_av_fake(w, v, kernel_size, stride, dilation, is_causal):
    return v.new_empty(w.shape[:-1] + (v.shape[-1],))


def _split_av_backward_impl(dout, w, v, kernel_size, stride, dilation, is_causal):
    args = (kernel_size, stride, dilation, is_causal)
    dout = dout.to(v.dtype)
    dw = metal_split.qk(dout, v, *args, fill=0.0).to(w.dtype)
    return dw, metal_split.inverse(w.to(v.dtype), dout, v.shape[-2], *args)


@torch.library.custom_op("natten_mps::split_av_backward", mutates_args=())
def split_av_backward(dout: Tensor, w: Tensor, v: Tensor, kernel_size: List[int], stride: List[int],
                      dilation: List[int], is_causal: List[bool]) -> Tuple[Tensor, Tensor]:
    return _split_av_backward_impl(dout, w, v, kernel_size, stride, dilation, is_causal)


@split_av_backward.register_fake
def _split_av_backward_fake(dout, w, v, kernel_size, stride, dilation, is_causal):
    return torch.empty_like(w), torch.empty_like(v)


def _split_av_setup(ctx, inputs, output):
    w, v = inputs[:2]
    ctx.save_for_backward(w, v)
    ctx.params = tuple(inputs[2:])


def _split_av_rule(ctx, dout):
    _refuse_double_backward()
    w, v = ctx.saved_tensors
    dw, dv = split_av_backward(dout, w, v, *ctx.params)
    return dw, dv, None, None, None, None


split_av.register_autograd(_split_av_rule, setup_context=_split_av_setup)


class _EagerSplitOp(torch.autograd.Function):
    """Eager twin of ``split_qk`` / ``split_av`` (as :class:`_EagerOp` is of the attention ops):
    ``forward(impl, backward_impl, a, b, params)`` -> ``impl(a, b, *params)``; same saved tensors
    and gradients as the registered op."""

    @staticmethod
    def forward(ctx, impl, backward_impl, a, b, params):
        ctx.save_for_backward(a, b)
        ctx.backward_impl, ctx.params = backward_impl, params
        return impl(a, b, *params)

    @staticmethod
    def backward(ctx, grad):
        _refuse_double_backward()
        a, b = ctx.saved_tensors
        da, db = ctx.backward_impl(grad, a, b, *ctx.params)
        return None, None, da, db, None


_eager_split_apply = _c_apply(_EagerSplitOp)


def split_scores(q: Tensor, k: Tensor, kernel_size: List[int], stride: List[int], dilation: List[int],
                 is_causal: List[bool]) -> Tensor:
    """``natten_mps::split_qk`` with its autograd, as the public API calls it (eager: no custom-op wrapper)."""
    params = (kernel_size, stride, dilation, is_causal)
    if _eager(q, k):
        if not _needs_grad(q, k):
            return metal_split.qk(q, k, *params)
        return _eager_split_apply(metal_split.qk, _split_qk_backward_impl, q, k, params)
    return split_qk(q, k, *params)


def split_weighted(w: Tensor, v: Tensor, kernel_size: List[int], stride: List[int], dilation: List[int],
                   is_causal: List[bool]) -> Tensor:
    """``natten_mps::split_av`` with its autograd, as the public API calls it (eager: no custom-op wrapper)."""
    params = (kernel_size, stride, dilation, is_causal)
    if _eager(w, v):
        if not _needs_grad(w, v):
            return metal_split.av(w, v, *params)
        return _eager_split_apply(metal_split.av, _split_av_backward_impl, w, v, params)
    return split_av(w, v, *params)
