"""Per-thread scratch buffers that the pure path reuses from call to call (CPU only).

The padded key/value buffers and gathered key windows live only inside one op call. Allocating
them fresh every call makes the allocator hand memory back to the OS and fault it in again on
first touch, which on a small problem costs as much as the attention itself (measured on the
2-core CI machine: 1-D L=256 forward+backward ~1.6x slower with fresh buffers). Each thread keeps
one buffer per slot, grown to the largest request and reused; requests above ``MAX_BYTES`` are
allocated fresh and not kept. Other devices have caching allocators, so they always allocate.

Nothing taken from here may escape the call that took it (no output is a view of a slot).
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import torch

MAX_BYTES = 64 << 20
_local = threading.local()


def take(slot: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` backed by this thread's buffer for ``slot``."""
    numel = math.prod(shape)
    if device.type != "cpu" or numel * dtype.itemsize > MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    pool = _local.__dict__.setdefault("pool", {})
    buf = pool.get((slot, dtype))
    if buf is None or buf.numel() < numel:
        buf = pool[(slot, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def release() -> None:
    """Drop this thread's buffers."""
    _local.__dict__.pop("pool", None)
