"""Which implementation runs: ``auto`` (Metal on MPS, pure PyTorch elsewhere), ``metal`` or ``pure``.

Set with :func:`set_backend` or the ``NATTEN_MPS_BACKEND`` environment variable (``NATTEN_BACKEND``,
natten-mps' name, is an alias); :func:`last_backend`
reports the path the most recent op took (``"metal"`` or ``"pure"``).
"""
from __future__ import annotations

import os

import torch

from .metal import runtime

_CHOICES = ("auto", "metal", "pure")
# NATTEN_BACKEND (natten-mps' name) is accepted as an alias; NATTEN_MPS_BACKEND wins when both are set.
_env_name = "NATTEN_MPS_BACKEND" if "NATTEN_MPS_BACKEND" in os.environ else "NATTEN_BACKEND"
_backend = os.environ.get(_env_name, "auto").lower()
if _backend not in _CHOICES:
    raise ValueError(f"{_env_name} must be one of {_CHOICES}, got {_backend!r}")
_last = {"path": None}


def set_backend(name: str) -> None:
    """Choose the implementation for every later call: ``"auto"`` (Metal kernels on MPS tensors, the
    pure-PyTorch path elsewhere; the default), ``"metal"`` (Metal kernels; an op on a tensor that cannot
    run them raises ``RuntimeError``) or ``"pure"`` (PyTorch ops on every device). Process-wide; the
    ``NATTEN_MPS_BACKEND`` variable sets it at import. Any other name raises ``ValueError``."""
    global _backend
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    _backend = name


def get_backend() -> str:
    """The setting made by :func:`set_backend` or ``NATTEN_MPS_BACKEND`` (``"auto"``, ``"metal"`` or
    ``"pure"``); :func:`last_backend` tells which path an op actually took."""
    return _backend


def last_backend():
    """``"metal"`` or ``"pure"``: the path taken by the most recent forward or backward op."""
    return _last["path"]


def use_metal(t: torch.Tensor, supported: bool = True) -> bool:
    """Decide the path for an op on ``t``; ``supported`` says whether a Metal kernel covers the config."""
    if _backend == "pure":
        choice = False
    elif _backend == "metal":
        if not runtime.runs_metal(t):
            raise RuntimeError(f"backend 'metal' needs MPS tensors (or NATTEN_MPS_EMULATE=1 on CPU, "
                               f"NATTEN_MPS_METAL_ON_CUDA=1 on CUDA), got a tensor on {t.device}")
        choice = supported
    else:
        choice = supported and runtime.runs_metal(t)
    _last["path"] = "metal" if choice else "pure"
    return choice
