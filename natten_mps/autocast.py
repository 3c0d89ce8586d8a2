"""Mixed precision: SDPA's autocast rule, shared by every public entry point (``functional``,
``varlen``, ``sage_mps``). A leaf module: it imports nothing of this package."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["autocast_inputs"]


def autocast_inputs(*tensors):
    """SDPA's autocast rule: under ``torch.autocast`` for the tensors' device, floating tensors are
    cast to the autocast dtype (``None`` entries pass through)."""
    first = tensors[0] if isinstance(tensors[0], Tensor) else next((t for t in tensors if isinstance(t, Tensor)), None)
    if first is None:
        return tensors
    kind = first.device.type
    if kind == "meta" or not torch.is_autocast_enabled(kind):
        return tensors
    dtype = torch.get_autocast_dtype(kind)
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t for t in tensors)
