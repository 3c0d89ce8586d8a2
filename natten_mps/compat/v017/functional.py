"""NATTEN 0.17's ``natten.functional``: heads-first split ops and heads-last fused ops.

Split ops (``[B, heads, *spatial, head_dim]``, weights ``[B, heads, *spatial, prod(kernel_size) +
N_add]``): ``na1d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False,
rpb=None)``, ``na1d_av(attn, value, kernel_size, dilation=1, additional_values=None,
is_causal=False)``, 2-D and 3-D likewise (``na3d_av``'s ``dilation`` has no default, as in 0.17);
ints or per-axis tuples. Scores are unscaled.

Fused ops (heads-last ``[B, *spatial, heads, head_dim]``): ``na1d(query, key, value, kernel_size,
dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None, additional_values=None,
xformers_kwargs=None)`` and 2-D/3-D; ``scale`` defaults to ``head_dim ** -0.5``; additional
keys/values ``[B, N_add, heads, head_dim]``. With ``rpb`` the weights are made explicitly (and
train). ``xformers_kwargs`` (0.17's options for its extra-token attention) choose nothing here.

Deprecated 0.15 names kept by 0.17.0-0.17.4: ``natten1dqkrpb(query, key, rpb, kernel_size,
dilation)``, ``natten1dqk``, ``natten1dav``, 2-D, 3-D (``kernel_size_d, kernel_size, dilation_d,
dilation``); the alias of 0.17.5 leaves them out, as 0.17.5 did.
"""
from __future__ import annotations

from ... import checks, functional
from .. import _legacy

__all__ = ["na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av", "na1d", "na2d", "na3d"]
DEPRECATED = ["natten1dqkrpb", "natten2dqkrpb", "natten3dqkrpb", "natten1dqk", "natten1dav", "natten2dqk",
              "natten2dav", "natten3dqk", "natten3dav"]


def na1d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    return _legacy.qk("na1d_qk", 1, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na2d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    return _legacy.qk("na2d_qk", 2, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na3d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None):
    return _legacy.qk("na3d_qk", 3, query, key, kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=additional_keys)


def na1d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return _legacy.av("na1d_av", 1, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def na2d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False):
    return _legacy.av("na2d_av", 2, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def na3d_av(attn, value, kernel_size, dilation, additional_values=None, is_causal=False):
    return _legacy.av("na3d_av", 3, attn, value, kernel_size, dilation, is_causal=is_causal,
                      additional_values=additional_values)


def _fused(rank, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys, additional_values,
           xformers_kwargs):
    name = f"na{rank}d"
    if xformers_kwargs is not None and not isinstance(xformers_kwargs, dict):
        raise TypeError(f"{name}: xformers_kwargs must be a dict or None, got {type(xformers_kwargs).__name__}")
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{name}: additional_keys and additional_values must be given together")
    if rpb is None:
        fn = {1: functional.na1d, 2: functional.na2d, 3: functional.na3d}[rank]
        return fn(query, key, value, kernel_size, dilation=dilation, is_causal=is_causal, scale=scale,
                  additional_keys=additional_keys, additional_values=additional_values)
    # With a positional bias the weights are explicit (heads-first split ops, bias and extra tokens).
    scale = checks.check_scale(scale, query.shape[-1])
    hf = _legacy.heads_first
    extra_k = None if additional_keys is None else hf(additional_keys)
    extra_v = None if additional_values is None else hf(additional_values)
    attn = _legacy.qk(name, rank, hf(query) * scale, hf(key), kernel_size, dilation, is_causal=is_causal, rpb=rpb,
                      additional_keys=extra_k).softmax(-1)
    out = _legacy.av(name, rank, attn, hf(value), kernel_size, dilation, is_causal=is_causal,
                     additional_values=extra_v)
    return _legacy.heads_last(out)


def na1d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None,
         additional_values=None, xformers_kwargs=None):
    return _fused(1, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                  additional_values, xformers_kwargs)


def na2d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None,
         additional_values=None, xformers_kwargs=None):
    return _fused(2, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                  additional_values, xformers_kwargs)


def na3d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None, additional_keys=None,
         additional_values=None, xformers_kwargs=None):
    return _fused(3, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                  additional_values, xformers_kwargs)


# Deprecated 0.15 names: 0.17.0 to 0.17.4 kept them (0.17.5 removed them).
def natten1dqkrpb(query, key, rpb, kernel_size, dilation):
    return na1d_qk(query, key, (kernel_size,), (dilation,), rpb=rpb)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation):
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2, rpb=rpb)


def natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation), rpb=rpb)


def natten1dqk(query, key, kernel_size, dilation):
    return na1d_qk(query, key, (kernel_size,), (dilation,))


def natten1dav(attn, value, kernel_size, dilation):
    return na1d_av(attn, value, (kernel_size,), (dilation,))


def natten2dqk(query, key, kernel_size, dilation):
    return na2d_qk(query, key, (kernel_size,) * 2, (dilation,) * 2)


def natten2dav(attn, value, kernel_size, dilation):
    return na2d_av(attn, value, (kernel_size,) * 2, (dilation,) * 2)


def natten3dqk(query, key, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))


def natten3dav(attn, value, kernel_size_d, kernel_size, dilation_d, dilation):
    return na3d_av(attn, value, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))
