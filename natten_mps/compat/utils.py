"""Helpers NATTEN 0.17's ``natten.utils`` exported that client modules call: argument
normalisation (``check_all_args``), the window size (``get_num_na_weights``) and ``log.get_logger``."""
from __future__ import annotations

import logging
import math

from .. import checks

__all__ = ["check_all_args", "get_num_na_weights", "get_logger"]


def check_all_args(na_dim: int, kernel_size, dilation, is_causal):
    """``(kernel_size, dilation, is_causal)`` as ``na_dim``-tuples (ints or bools broadcast);
    ``ValueError`` names the argument when a value is out of range or of the wrong length."""
    if na_dim not in (1, 2, 3):
        raise ValueError(f"check_all_args: na_dim must be 1, 2 or 3, got {na_dim!r}")
    ks = checks.as_tuple(kernel_size, na_dim, "kernel_size")
    dil = checks.as_tuple(dilation, na_dim, "dilation")
    causal = checks.as_tuple(is_causal, na_dim, "is_causal", kind=bool)
    if any(k < 2 for k in ks):
        raise ValueError(f"kernel_size must be > 1 on every axis, got {ks}")
    if any(d < 1 for d in dil):
        raise ValueError(f"dilation must be >= 1 on every axis, got {dil}")
    return ks, dil, causal


def get_num_na_weights(kernel_size) -> int:
    """Number of attention weights a query has: the product of ``kernel_size``."""
    return math.prod(kernel_size) if isinstance(kernel_size, (tuple, list)) else int(kernel_size)


def get_logger(name: str) -> logging.Logger:
    """NATTEN's ``natten.utils.log.get_logger``: the standard library's ``logging.getLogger(name)``."""
    return logging.getLogger(name)
