"""What runs where: ``has_mps``, ``has_metal`` and ``get_support_matrix``.

The support matrix is computed by asking the predicates the op layer dispatches with
(``backends.metal.supported`` and the dense-attention rule in ``ops``) about example tensors on the
``meta`` device, so it cannot drift from the code that decides.
"""
from __future__ import annotations

from typing import Dict

import torch

from . import ops
from .backends import metal, metal_split
from .metal import runtime

__all__ = ["has_mps", "has_metal", "get_support_matrix", "family_status"]

_SHADERS = ("natten/attention.metal", "natten/split.metal", "sage/int8_attention.metal")


def family_status() -> Dict[str, dict]:
    """Per kernel family ``"<shader> [<unit>]"``: ``available`` on every device this process ran it
    on, and for a failed one the failures (device, stage, kernel, error). Families fail only on the
    Metal device (MPS) unless strict mode is off under the emulator or the CUDA back end."""
    failures = runtime.family_report()
    out: Dict[str, dict] = {}
    for shader in _SHADERS:
        for unit in runtime.shader_units(shader):
            mine = [f for f in failures if f["shader"] == f"shaders/{shader}" and f["unit"] == unit]
            out[f"{shader} [{unit}]"] = {"available": not mine, "failures": mine}
    return out

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def has_mps() -> bool:
    """Whether PyTorch sees an MPS device."""
    return runtime.mps_available()


def has_metal() -> bool:
    """Whether the Metal kernels run here: MPS with ``torch.mps.compile_shader``."""
    return has_mps() and hasattr(torch.mps, "compile_shader")


def _t(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _na_case(rank: int, dtype, heads=4, heads_kv=4, dim=32, dim_v=32, tokens=8):
    spatial = (tokens,) * rank
    return (_t(1, *spatial, heads, dim, dtype=dtype), _t(1, *spatial, heads_kv, dim, dtype=dtype),
            _t(1, *spatial, heads_kv, dim_v, dtype=dtype))


def get_support_matrix() -> Dict[str, dict]:
    """Per path (``metal``, ``pure``): availability, and for every op, dtype and feature whether that
    path runs it. ``metal`` entries say whether the Metal kernels cover the case (on MPS, or under
    the emulator / the CUDA back end); uncovered cases run the pure path on the same device.

    Shape: ``{"metal": {"available": bool, "ops": {op: {dtype: bool}}, "features": {name: bool}},
    "pure": {...}}``; ``metal`` also holds ``families``: per kernel family (``"<shader> [<unit>]"``, a
    unit being one dtype's instantiations) whether it is built and working on the Metal device of this
    process, and for a failed one where it failed (``stage``: compile, pipeline or launch), the
    kernel and the compiler's or runtime's message (that family's ops then run on the pure path,
    and their entries here say False); ops: ``na1d``/``na2d``/``na3d`` forward and backward, ``na*_additional_kv``,
    ``attention`` (dense), ``attention_causal_cross`` (causal with Lq != Lk), ``na*d_varlen``,
    ``na*d_qk`` / ``na*d_av`` (split ops, explicit weights).
    """
    metal_ops: Dict[str, Dict[str, bool]] = {}
    for name, dtype in _DTYPES.items():
        for rank in (1, 2, 3):
            q, k, v = _na_case(rank, dtype)
            for op in (f"na{rank}d_forward", f"na{rank}d_backward"):
                metal_ops.setdefault(op, {})[name] = metal.supported(q, k, v)
            xk = _t(1, 2, 4, 32, dtype=dtype)
            metal_ops.setdefault(f"na{rank}d_additional_kv", {})[name] = metal.supported(q, k, v, xk, xk)
            metal_ops.setdefault(f"na{rank}d_varlen", {})[name] = metal.supported(q, k, v)
            w = _t(*q.shape[:-1], 9, dtype=dtype)
            metal_ops.setdefault(f"na{rank}d_qk", {})[name] = metal_split.split_supported(q, k)
            metal_ops.setdefault(f"na{rank}d_av", {})[name] = metal_split.split_supported(w, v)
        q, k, v = _na_case(1, dtype)
        metal_ops.setdefault("attention", {})[name] = ops._dense_on_metal(q, k, v, False)
        metal_ops.setdefault("attention_causal_cross", {})[name] = ops._dense_on_metal(q, k[:, :5], v[:, :5], True)
    f32 = torch.float32
    features = {
        "gqa": metal.supported(*_na_case(2, f32, heads=8, heads_kv=2)),
        "mqa": metal.supported(*_na_case(2, f32, heads=8, heads_kv=1)),
        "head_dim_v_differs": metal.supported(*_na_case(2, f32, dim_v=16)),
        "head_dim_256": metal.supported(*_na_case(1, f32, dim=256, dim_v=256)),
        "head_dim_512": metal.supported(*_na_case(1, f32, dim=512, dim_v=512)),
        # window arguments never change the Metal decision: every rule lives in the kernels
        "causal": True, "dilation": True, "stride": True, "even_kernel": True, "return_lse": True,
    }
    pure_ops = {op: {name: True for name in _DTYPES} for op in metal_ops}
    return {
        "metal": {"available": has_metal(), "ops": metal_ops, "features": features,
                  "shaders": [metal.ATTENTION_SHADER, metal_split.SPLIT_SHADER],
                  "families": family_status()},
        "pure": {"available": True, "ops": pure_ops, "features": {k: True for k in features}},
    }
