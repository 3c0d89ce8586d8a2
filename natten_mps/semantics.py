"""The neighborhood rule of upstream NATTEN, one axis at a time, in our own words.

Every rule below is per spatial axis; a key attends to a query when the rule holds on *every*
axis (the neighborhood is the Cartesian product of the per-axis windows).

Notation for one axis: input length ``L``, kernel size ``K``, stride ``s``, dilation ``d``.

* **Dilation.** Positions are split into ``d`` interleaved groups by ``i % d``. A query only sees
  keys of its own group, and inside the group positions are renumbered ``i // d``. Group ``g``
  holds ``Lg = L // d + (1 if g < L % d else 0)`` positions. Everything below happens inside a group,
  in group coordinates.
* **Stride.** Queries are cut into runs of ``s`` consecutive (group) positions; all queries of a run
  share the window of the run's *leader*. Non-causal: the leader is the centre query of the run
  (``run_start + s // 2``, the right-hand one of the two centres when ``s`` is even). Causal: the
  leader is the last query of the run. A leader past the end of the group is moved to ``Lg - 1``.
  Stride does not downsample: the output has the input's shape.
* **Non-causal window.** The window has ``K // 2`` keys left of its centre and ``K // 2 - (1 - K % 2)``
  right of it (even kernels have one more key on the left). The centre is the leader, clamped into
  ``[K // 2, Lg - 1 - right]`` so that the window always holds exactly ``K`` keys: at the borders
  the window is shifted inwards, never truncated.
* **Causal window.** Keys ``j`` with ``leader - K < j <= query``: at most ``K`` keys, ending at the
  query itself (not at the leader), never looking ahead. Near the start it holds fewer keys.
* **Full attention.** When ``K == L`` on every axis and no axis is causal, every query sees every
  key: this is plain dense attention, and implementations take the FMHA fast path.
* **Additional keys/values** are seen by every query, in addition to its neighborhood; the two
  attentions are merged exactly through their log-sum-exp.

``window_bounds`` returns, for the queries of one group, the inclusive key range ``[lo, hi]``.
"""
from __future__ import annotations

from typing import Tuple

import torch


def group_length(length: int, dilation: int, group: int) -> int:
    """Number of positions of dilation group ``group`` on an axis of ``length``."""
    return length // dilation + (1 if group < length % dilation else 0)


def window_bounds(queries: torch.Tensor, group_len: int, kernel_size: int, stride: int,
                  causal: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inclusive key range ``[lo, hi]`` (group coordinates) of each query in ``queries``.

    ``queries`` is an integer tensor of group coordinates ``0 <= q < group_len``.
    """
    run_start = (queries // stride) * stride
    if causal:
        leader = torch.clamp(run_start + stride - 1, max=group_len - 1)
        lo = torch.clamp(leader - kernel_size + 1, min=0)
        return lo, queries.clone()
    left = kernel_size // 2
    right = kernel_size // 2 - (1 - kernel_size % 2)
    leader = torch.clamp(run_start + stride // 2, max=group_len - 1)
    centre = torch.clamp(leader, min=left, max=group_len - 1 - right)
    return centre - left, centre + right


def window_bounds_int(query: int, group_len: int, kernel_size: int, stride: int,
                      causal: bool) -> Tuple[int, int]:
    """Scalar form of :func:`window_bounds` (used to size tiles)."""
    lo, hi = window_bounds(torch.tensor([query]), group_len, kernel_size, stride, causal)
    return int(lo[0]), int(hi[0])


def is_full_attention(spatial, kernel_size, is_causal) -> bool:
    """True when every query sees every key: kernel equals the input on every axis, no causal."""
    return all(k == n for k, n in zip(kernel_size, spatial)) and not any(is_causal)
