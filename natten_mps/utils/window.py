"""Window positions on one axis, in the terms of NATTEN's CPU kernels (``get_window_start``,
``get_pb_start``), as natten-mps 0.3.3's ``natten_mps.utils.window`` exported them.

For position ``index`` of an axis of ``length`` with ``kernel_size`` and ``dilation`` (stride 1, not
causal): the window's first key position (``get_window_start``, in axis coordinates, so
``start + n * dilation`` is neighbour ``n``), its last (``get_window_end``), and the ``rpb`` index of
neighbour 0 (``get_pb_start``: ``kernel_size - 1 + (start - index) / dilation``). Computed from
:func:`natten_mps.semantics.window_bounds`, the rule every op uses.
"""
from __future__ import annotations

import torch

from ..semantics import window_bounds

__all__ = ["get_window_start", "get_window_start_vectorized", "get_window_end", "get_pb_start",
           "get_pb_start_vectorized"]


def _starts(indices: torch.Tensor, length: int, kernel_size: int, dilation: int):
    indices = indices.to(torch.long)
    group, coord = indices % dilation, indices // dilation
    glen = length // dilation + (group < length % dilation).to(torch.long)
    lo = torch.empty_like(indices)
    for g in range(min(dilation, length)):
        sel = group == g
        if bool(sel.any()):
            lo[sel], _ = window_bounds(coord[sel], int(glen[sel][0]), kernel_size, 1, False)
    return lo, coord, group


def get_window_start_vectorized(indices: torch.Tensor, length: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """First key position of the window of each position in ``indices`` (any shape, int), as a
    long tensor of the same shape; ``length``, ``kernel_size``, ``dilation`` as :func:`get_window_start`."""
    lo, _, group = _starts(indices, length, kernel_size, dilation)
    return lo * dilation + group


def get_pb_start_vectorized(indices: torch.Tensor, length: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """``rpb`` index of neighbour 0 for each position in ``indices`` (any shape, int), as a long
    tensor of the same shape: ``kernel_size - 1 + (start - index) / dilation``."""
    lo, coord, _ = _starts(indices, length, kernel_size, dilation)
    return kernel_size - 1 + lo - coord


def get_window_start(index: int, length: int, kernel_size: int, dilation: int) -> int:
    """First key position of the window of position ``index`` on an axis of ``length`` (stride 1, not
    causal): neighbour ``n`` is ``start + n * dilation``. Needs ``kernel_size * dilation <= length``."""
    return int(get_window_start_vectorized(torch.tensor([index]), length, kernel_size, dilation)[0])


def get_window_end(index: int, length: int, kernel_size: int, dilation: int) -> int:
    """Last key position of the window of position ``index``:
    ``get_window_start(...) + (kernel_size - 1) * dilation``."""
    return get_window_start(index, length, kernel_size, dilation) + (kernel_size - 1) * dilation


def get_pb_start(index: int, length: int, kernel_size: int, dilation: int) -> int:
    """``rpb`` index of neighbour 0 of position ``index`` (``rpb`` has ``2 * kernel_size - 1`` entries
    an axis): ``kernel_size - 1 + (start - index) / dilation``."""
    return int(get_pb_start_vectorized(torch.tensor([index]), length, kernel_size, dilation)[0])
