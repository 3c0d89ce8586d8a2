"""NATTEN 0.20's ``natten.functional``: heads-last fused ops, ``attention``, ``merge_attentions``.

``na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
additional_keys=None, additional_values=None, **tuning)`` and 2-D/3-D over ``[B, *spatial, heads,
head_dim]``; ``attention(query, key, value, scale=None, return_lse=False, **tuning)`` over ``[B,
tokens, heads, head_dim]``; ``merge_attentions(outputs, lse_tensors, torch_compile=True)``.
``tuning`` are 0.20's backend and tile choices for its CUDA kernels (``backend``, ``q_tile_shape``,
``kv_tile_shape``, ``backward_*``, ``run_persistent_kernel``, ``kernel_schedule``, ``torch_compile``,
``try_fuse_additional_kv``, ``attention_kwargs``): accepted, choosing nothing here; unknown keywords
raise ``TypeError``. 0.20 had no split ops (0.21 neither).
"""
from __future__ import annotations

from ... import checks, functional

__all__ = ["na1d", "na2d", "na3d", "attention", "merge_attentions"]


def _na(rank, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys, additional_values,
        tuning):
    checks.check_tuning(f"na{rank}d", tuning)
    fn = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}[rank]
    return fn(query, key, value, kernel_size, stride=stride, dilation=dilation, is_causal=is_causal, scale=scale,
              additional_keys=additional_keys, additional_values=additional_values)


def na1d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
         additional_values=None, **tuning):
    """1-D neighborhood attention, heads-last (NATTEN 0.20's signature; :func:`natten_mps.na1d`).

    ``query`` ``[B, L, heads, D]``, ``key``/``value`` ``[B, L, heads_kv, D|Dv]``; ``kernel_size``,
    ``stride`` (default 1), ``dilation`` (default 1), ``is_causal`` (default False): ints/bools or
    1-tuples; ``scale`` default ``D ** -0.5``; ``additional_keys``/``additional_values``
    ``[B, N_add, heads_kv, D|Dv]`` or ``None``. ``**tuning``: 0.20's kernel choices, accepted and
    choosing nothing. Returns ``[B, L, heads, Dv]`` (no ``return_lse`` in 0.20). Raises
    ``TypeError`` for an unknown keyword, and ``TypeError``/``ValueError`` as :func:`natten_mps.na1d`.
    """
    return _na(1, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, tuning)


def na2d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
         additional_values=None, **tuning):
    """2-D neighborhood attention, heads-last (NATTEN 0.20's signature; :func:`natten_mps.na2d`).

    ``query`` ``[B, X, Y, heads, D]``, ``key``/``value`` ``[B, X, Y, heads_kv, D|Dv]``; ``kernel_size``,
    ``stride`` (default 1), ``dilation`` (default 1), ``is_causal`` (default False): ints/bools or
    2-tuples; ``scale`` default ``D ** -0.5``; ``additional_keys``/``additional_values``
    ``[B, N_add, heads_kv, D|Dv]`` or ``None``. ``**tuning``: 0.20's kernel choices, accepted and
    choosing nothing. Returns ``[B, X, Y, heads, Dv]`` (no ``return_lse`` in 0.20). Raises
    ``TypeError`` for an unknown keyword, and ``TypeError``/``ValueError`` as :func:`natten_mps.na2d`.
    """
    return _na(2, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, tuning)


def na3d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
         additional_values=None, **tuning):
    """3-D neighborhood attention, heads-last (NATTEN 0.20's signature; :func:`natten_mps.na3d`).

    ``query`` ``[B, X, Y, Z, heads, D]``, ``key``/``value`` ``[B, X, Y, Z, heads_kv, D|Dv]``; ``kernel_size``,
    ``stride`` (default 1), ``dilation`` (default 1), ``is_causal`` (default False): ints/bools or
    3-tuples; ``scale`` default ``D ** -0.5``; ``additional_keys``/``additional_values``
    ``[B, N_add, heads_kv, D|Dv]`` or ``None``. ``**tuning``: 0.20's kernel choices, accepted and
    choosing nothing. Returns ``[B, X, Y, Z, heads, Dv]`` (no ``return_lse`` in 0.20). Raises
    ``TypeError`` for an unknown keyword, and ``TypeError``/``ValueError`` as :func:`natten_mps.na3d`.
    """
    return _na(3, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, tuning)


def attention(query, key, value, scale=None, return_lse=False, **tuning):
    """Dense (non-causal) attention with NATTEN 0.20's signature (no ``is_causal``; 0.21 added it).

    ``query`` ``[B, Lq, heads, D]``, ``key``/``value`` ``[B, Lk, heads_kv, D|Dv]``; ``scale`` default
    ``D ** -0.5``. Returns ``[B, Lq, heads, Dv]``, and with ``return_lse=True`` also the log-sum-exp
    ``[B, Lq, heads]`` (float32). ``**tuning``: 0.20's kernel choices, accepted and choosing nothing.
    Raises ``TypeError`` for an unknown keyword or mismatched dtypes, ``ValueError`` for tensors that
    are not 4-D or disagree in batch, head_dim or heads (``heads`` a multiple of ``heads_kv``).
    """
    checks.check_tuning("attention", tuning)
    return functional.attention(query, key, value, scale=scale, return_lse=return_lse)


def merge_attentions(outputs, lse_tensors, torch_compile=True):
    """Merge attentions over disjoint key sets (NATTEN 0.20's signature; :func:`natten_mps.merge_attentions`).

    ``outputs[i]`` ``[B, *spatial, heads, Dv]``, ``lse_tensors[i]`` ``[B, *spatial, heads]``, at least two
    of each. Returns ``(output, lse)``: ``lse = logsumexp_i(lse_i)``, ``output = sum_i exp(lse_i - lse) *
    output_i``. ``torch_compile`` (default True) changes nothing. Raises ``TypeError`` for non-lists,
    non-tensors or mixed output dtypes, ``ValueError`` for fewer than two outputs or mismatched shapes.
    """
    return functional.merge_attentions(outputs, lse_tensors, torch_compile)
