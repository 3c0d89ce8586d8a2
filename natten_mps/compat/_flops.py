"""FLOP counting for fvcore-style counters (``add_natten_handle``, NATTEN 0.14-0.17's ``natten.flops``)."""
from __future__ import annotations

from typing import Any, List

__all__ = ["add_natten_handle", "_FlopHandler"]


def _shape(value) -> List[int]:
    """Shape of a traced value (fvcore passes ``torch._C.Value``) or of a tensor."""
    if hasattr(value, "type") and hasattr(value.type(), "sizes"):
        return list(value.type().sizes())
    return list(value.shape)


class _FlopHandler:
    """Multiply-adds of one op from its input/output shapes (fvcore's convention, one "flop" per
    multiply-add; handle protocol ``(inputs, outputs)``). ``kind``: ``"fused"`` (tokens * heads *
    window * (D + Dv), the window from the op's kernel_size argument), ``"qk"`` (tokens * heads *
    Kvol * D), ``"av"`` (tokens * heads * Kvol * Dv)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, inputs: List[Any], outputs: List[Any]) -> int:
        if self.kind == "qk":
            w, a = _shape(outputs[0]), _shape(inputs[0])
            return _prod(w) * a[-1]
        if self.kind == "av":
            w, o = _shape(inputs[0]), _shape(outputs[0])
            return _prod(w) * o[-1]
        q, k, v = (_shape(x) for x in inputs[:3])
        window = _prod(_kernel_arg(inputs)) if len(inputs) > 3 and _kernel_arg(inputs) else _prod(k[1:-2])
        return _prod(q[:-1]) * window * (q[-1] + v[-1])


def _kernel_arg(inputs):
    arg = inputs[3]
    if hasattr(arg, "toIValue"):
        arg = arg.toIValue()
    return list(arg) if isinstance(arg, (list, tuple)) else None


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


_HANDLES = {"natten_mps::na_forward": "fused", "natten_mps::na_forward_extra": "fused",
            "natten_mps::na_varlen_forward": "fused", "natten_mps::split_qk": "qk", "natten_mps::split_av": "av"}


def add_natten_handle(flop_ctr):
    """Register FLOP handles for this package's ops on ``flop_ctr`` (fvcore's ``FlopCountAnalysis``
    or anything with ``set_op_handle(name, handle)``); returns what ``set_op_handle`` returns."""
    handles = {name: _FlopHandler(kind) for name, kind in _HANDLES.items()}
    return flop_ctr.set_op_handle(**handles)
