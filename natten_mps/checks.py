"""Argument checks shared by the functional API; every failure names the argument and values."""
from __future__ import annotations

from .lru import SignatureCache  # noqa: F401  (kept per call signature; re-exported here)

from typing import Optional, Sequence, Tuple, Union

import torch

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def as_tuple(value, rank: int, name: str, kind=int) -> tuple:
    """Expand an int (or bool) to a ``rank``-tuple, or check a given tuple's length and types."""
    if kind is bool:
        ok = lambda x: isinstance(x, (bool, int)) and not isinstance(x, float)  # noqa: E731
    else:
        ok = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
    if isinstance(value, (list, tuple)):
        if len(value) != rank:
            raise ValueError(f"{name} must have {rank} entries for {rank}-D attention, got {tuple(value)}")
        if not all(ok(x) for x in value):
            raise TypeError(f"{name} entries must be {kind.__name__}s, got {tuple(value)}")
        return tuple(kind(x) for x in value)
    if not ok(value):
        raise TypeError(f"{name} must be a {kind.__name__} or a tuple of {rank} {kind.__name__}s, got {value!r}")
    return (kind(value),) * rank


def check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16 (float64 for checks), got {t.dtype}")


def check_same(tensors, names, what: str) -> None:
    first = getattr(tensors[0], what)
    for t, n in zip(tensors[1:], names[1:]):
        if getattr(t, what) != first:
            raise (TypeError if what == "dtype" else ValueError)(
                f"{names[0]} and {n} must have the same {what}, got {first} and {getattr(t, what)}")


def check_qkv(query, key, value, rank: int) -> Tuple[int, int]:
    """Check ``[batch, *spatial, heads, dim]`` tensors; return ``(heads, heads_kv)``."""
    names = ("query", "key", "value")
    for t, n in zip((query, key, value), names):
        check_tensor(t, n)
        if t.dim() != rank + 3:
            raise ValueError(f"na{rank}d: {n} must be a {rank + 3}-D tensor [batch, {'*spatial, ' if rank else ''}"
                             f"heads, head_dim] for {rank}-D attention, got shape {tuple(t.shape)}")
    check_same((query, key, value), names, "dtype")
    check_same((query, key, value), names, "device")
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(f"Spatial dimensions must match: key and value must agree on [batch, *spatial, heads], "
                         f"got {tuple(key.shape)} and {tuple(value.shape)}")
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"query and key must have the same batch size, got {query.shape[0]} and {key.shape[0]}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"Head dim mismatch: query and key must have the same head_dim, got {query.shape[-1]} and "
                         f"{key.shape[-1]}")
    heads, heads_kv = query.shape[-2], key.shape[-2]
    if heads_kv < 1 or heads % heads_kv != 0:
        raise ValueError(f"query heads ({heads}) must be divisible by key/value heads ({heads_kv}) for GQA/MQA")
    return heads, heads_kv


def check_na_params(query, key, kernel_size, stride, dilation, is_causal, rank: int):
    spatial = tuple(query.shape[1:1 + rank])
    if tuple(key.shape[1:1 + rank]) != spatial:
        raise ValueError(f"query and key must have the same spatial shape, got {spatial} and "
                         f"{tuple(key.shape[1:1 + rank])}")
    ks = as_tuple(kernel_size, rank, "kernel_size")
    st = as_tuple(stride, rank, "stride")
    dil = as_tuple(dilation, rank, "dilation")
    causal = as_tuple(is_causal, rank, "is_causal", kind=bool)
    for i in range(rank):
        if dil[i] < 1:
            raise ValueError(f"dilation must be >= 1, got dilation={dil}")
        if ks[i] < 2:
            raise ValueError(f"kernel_size must be >= 2, got kernel_size={ks}")
        if ks[i] * dil[i] > spatial[i]:
            raise ValueError(f"kernel_size * dilation must not exceed the input size on every axis, got "
                             f"kernel_size={ks}, dilation={dil}, input spatial shape={spatial}")
        if st[i] < 1 or st[i] > ks[i]:
            raise ValueError(f"stride must satisfy 1 <= stride <= kernel_size, got stride={st}, kernel_size={ks}")
    return spatial, ks, st, dil, causal


def check_additional_kv(query, additional_keys, additional_values, heads_kv: int):
    if (additional_keys is None) != (additional_values is None):
        raise ValueError("additional_keys and additional_values must both be provided (or both None), got "
                         f"additional_keys={'None' if additional_keys is None else 'a tensor'}, "
                         f"additional_values={'None' if additional_values is None else 'a tensor'}")
    if additional_keys is None:
        return
    for t, n in ((additional_keys, "additional_keys"), (additional_values, "additional_values")):
        check_tensor(t, n)
        if t.dim() != 4:
            raise ValueError(f"{n} must be a 4D tensor [batch, tokens, heads_kv, head_dim], got shape {tuple(t.shape)}")
        if t.dtype != query.dtype:
            raise TypeError(f"{n} must have the query's dtype {query.dtype}, got {t.dtype}")
        if t.device != query.device:
            raise ValueError(f"{n} must be on the query's device {query.device}, got {t.device}")
        if t.shape[0] != query.shape[0] or t.shape[2] != heads_kv:
            raise ValueError(f"{n} must have batch {query.shape[0]} and {heads_kv} heads, got {tuple(t.shape)}")
    if additional_keys.shape[:3] != additional_values.shape[:3]:
        raise ValueError(f"additional_keys and additional_values must agree on [batch, tokens, heads], got "
                         f"{tuple(additional_keys.shape)} and {tuple(additional_values.shape)}")
    if additional_keys.shape[-1] != query.shape[-1]:
        raise ValueError(f"additional_keys head dim must equal the query's ({query.shape[-1]}), got "
                         f"{additional_keys.shape[-1]}")


def check_scale(scale: Optional[float], head_dim: int) -> float:
    if scale is None:
        return float(head_dim) ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {scale!r}")
    return float(scale)


# Upstream NATTEN's choices of its own CUDA kernels (backend, tile shapes, schedules): accepted by
# the functional API for drop-in compatibility; they choose nothing here and change no result.
TUNING_ARGUMENTS = frozenset({
    "attention_kwargs", "backend", "q_tile_shape", "kv_tile_shape", "backward_q_tile_shape",
    "backward_kv_tile_shape", "backward_kv_splits", "backward_use_pt_reduction", "run_persistent_kernel",
    "kernel_schedule", "torch_compile", "try_fuse_additional_kv", "q_tile_size", "kv_tile_size",
    "backward_q_tile_size", "backward_kv_tile_size"})


def check_tuning(name: str, tuning: dict) -> None:
    """Refuse keywords that are neither attention arguments nor upstream's kernel choices."""
    if not tuning:
        return
    unknown = sorted(set(tuning) - TUNING_ARGUMENTS)
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword arguments {unknown} (besides its attention arguments it "
                        f"accepts upstream NATTEN's kernel choices {sorted(TUNING_ARGUMENTS)}, which choose nothing here)")


# ---- per-signature results of the checks ---------------------------------------------------------
# A call whose arguments were checked once is not checked again: the checks' results (expanded
# window tuples, scale, ...) are kept per signature, the tensors' shapes, dtypes and devices and
# the other arguments' exact values *and types* (so ``7.0`` or ``True`` never hit the entry of
# ``7``). An argument the key cannot hold exactly (anything but ints, bools, floats, None and
# tuples/lists of them, or a non-tensor where a tensor belongs) makes the call uncached: it is
# checked in full every time, so every bad input still raises the same error.

_SCALARS = (int, bool, float, type(None))


def arg_key(x):
    """A hashable key for a window argument or scale that tells types apart, or None when ``x``
    is not a plain int/bool/float/None or a list/tuple of them."""
    t = type(x)
    if t in _SCALARS:
        return (t, x)
    if t is tuple or t is list:
        parts = [(type(e), e) for e in x]
        if all(p[0] in _SCALARS for p in parts):
            return (len(parts), *parts)
    return None


def window_key(x):
    """A hashable key for a window argument telling types apart: ``(type, value)``, with the
    element types of a list/tuple (raises TypeError for unhashable entries)."""
    t = type(x)
    if t is list or t is tuple:
        return (t, tuple(x), tuple(map(type, x)))
    return (t, x)


def tensor_key(t):
    """``(type, shape, dtype, device)`` of a tensor (None stays None); False for anything else."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        return False
    return (type(t), t.shape, t.dtype, t.device)
