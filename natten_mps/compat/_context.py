"""NATTEN's feature probes and context settings (0.15 to 0.21), answered for this package.

Probes say what this package can do, so code written against NATTEN takes its fast paths:
``has_fused_na``/``has_fna``: True (fused neighborhood attention runs on every device: Metal
kernels on Apple GPUs, PyTorch ops elsewhere); ``has_half``/``has_bfloat``: True;
``has_cuda``: ``torch.cuda.is_available()`` (False on a Mac, so code that moves tensors to CUDA when
it answers True keeps them where they are); ``has_gemm`` and the GEMM/TF32 queries: False (there are
no GEMM kernels to select).

Settings are recorded and read back as upstream's getters do: ``use_fused_na``, KV parallelism,
the autotuner, deterministic mode, the memory preference, tiled/GEMM NA, flex attention and flex
compilation. They choose nothing in the computation (one implementation per device), except
``use_fused_na(False)``: the 0.17 modules then take their split path (explicit weights, attention
dropout), as 0.17 did. Defaults are upstream's, except that fused NA starts enabled (it is always
available here). ``reset()`` restores the defaults.
"""
from __future__ import annotations

import enum
from typing import Optional

import torch

__all__ = ["has_cuda", "has_half", "has_bfloat", "has_gemm", "has_fused_na", "has_fna", "has_tf32_gemm",
           "has_fp32_gemm", "has_fp64_gemm", "enable_tf32", "disable_tf32", "enable_tiled_na", "disable_tiled_na",
           "enable_gemm_na", "disable_gemm_na", "use_deterministic_algorithms", "are_deterministic_algorithms_enabled",
           "use_kv_parallelism_in_fused_na", "is_kv_parallelism_in_fused_na_enabled", "use_fused_na",
           "is_fused_na_enabled", "use_fna", "is_fna_enabled", "use_flex_attention", "force_flex_attention",
           "use_autotuner", "disable_autotuner", "is_autotuner_enabled", "is_autotuner_enabled_for_forward",
           "is_autotuner_enabled_for_backward", "is_autotuner_thorough_for_forward",
           "is_autotuner_thorough_for_backward", "set_memory_usage_preference", "get_memory_usage_preference",
           "is_memory_usage_default", "is_memory_usage_strict", "is_memory_usage_unrestricted", "use_tiled_na",
           "is_tiled_na_enabled", "use_gemm_na", "is_gemm_na_enabled", "use_tf32_in_gemm_na",
           "is_tf32_in_gemm_na_enabled", "allow_flex_compile", "allow_flex_compile_backprop", "disable_flex_compile",
           "disable_flex_compile_backprop", "is_flex_compile_allowed", "is_flex_compile_backprop_allowed"]


class MemoryUsagePreference(enum.Enum):
    """NATTEN 0.17-0.21's memory preference for backward-pass tiling."""
    Default = 0
    Strict = 1
    Unrestricted = 2


class _Settings:
    fused_na = True
    flex_attention = False
    force_flex_attention = False
    kv_parallelism = False
    deterministic = False
    memory = MemoryUsagePreference.Default
    autotuner_forward = False
    autotuner_backward = False
    autotuner_thorough_forward = False
    autotuner_thorough_backward = False
    tiled_na = True
    gemm_na = True
    tf32_in_gemm_na = True
    flex_compile = False
    flex_compile_backprop = False


_DEFAULTS = {k: v for k, v in vars(_Settings).items() if not k.startswith("_")}


def reset() -> None:
    """Restore every setting to its default."""
    for k, v in _DEFAULTS.items():
        setattr(_Settings, k, v)


def _mode(name: str, mode) -> bool:
    if not isinstance(mode, bool):
        raise TypeError(f"{name}: mode must be a bool, got {mode!r}")
    return mode


# ---- probes -------------------------------------------------------------------------------------
def has_cuda() -> bool:
    return torch.cuda.is_available()


def has_half(device_index=None) -> bool:
    return True


def has_bfloat(device_index=None) -> bool:
    return True


def has_gemm(device_index=None) -> bool:
    return False


def has_fused_na(device_index=None) -> bool:
    return True


has_fna = has_fused_na
has_tf32_gemm = has_fp32_gemm = has_fp64_gemm = has_gemm


# ---- 0.15 switches (0.17 kept them, deprecated) --------------------------------------------------
def enable_tf32() -> bool:
    """No TF32 GEMM kernels here: returns False, as NATTEN did where TF32 GEMM was unavailable."""
    return False


def disable_tf32() -> bool:
    return False


def enable_tiled_na():
    _Settings.tiled_na = True


def disable_tiled_na():
    _Settings.tiled_na = False


def enable_gemm_na():
    _Settings.gemm_na = True


def disable_gemm_na():
    _Settings.gemm_na = False


# ---- 0.17 context --------------------------------------------------------------------------------
def use_deterministic_algorithms(mode: bool = True):
    _Settings.deterministic = _mode("use_deterministic_algorithms", mode)


def are_deterministic_algorithms_enabled() -> bool:
    return _Settings.deterministic


def use_kv_parallelism_in_fused_na(mode: bool = True):
    """KV parallelism is non-deterministic upstream: refused in NATTEN's deterministic mode, and
    ignored under torch's deterministic flag, as upstream did."""
    if not _mode("use_kv_parallelism_in_fused_na", mode):
        _Settings.kv_parallelism = False
        return
    if torch.are_deterministic_algorithms_enabled():
        return
    if _Settings.deterministic:
        raise RuntimeError("NATTEN's deterministic mode is enabled (use_deterministic_algorithms); KV parallelism "
                           "cannot be enabled with it")
    _Settings.kv_parallelism = True


def is_kv_parallelism_in_fused_na_enabled() -> bool:
    return _Settings.kv_parallelism


def use_fused_na(mode: bool = True, kv_parallel: bool = True, use_flex_attention: bool = False,
                 force_flex_attention: bool = False):
    if not _mode("use_fused_na", mode):
        _Settings.fused_na = _Settings.flex_attention = _Settings.force_flex_attention = False
        use_kv_parallelism_in_fused_na(False)
        return
    use_kv_parallelism_in_fused_na(kv_parallel)
    _Settings.fused_na = True
    _Settings.flex_attention = bool(use_flex_attention)
    _Settings.force_flex_attention = bool(force_flex_attention)


def is_fused_na_enabled() -> bool:
    return _Settings.fused_na


use_fna = use_fused_na
is_fna_enabled = is_fused_na_enabled


def use_flex_attention():
    return use_fused_na(True, use_flex_attention=True)


def force_flex_attention():
    return use_fused_na(True, use_flex_attention=True, force_flex_attention=True)


def use_autotuner(forward_pass: Optional[bool] = None, backward_pass: Optional[bool] = None,
                  thorough_mode_forward: Optional[bool] = None, thorough_mode_backward: Optional[bool] = None,
                  warmup_steps_forward: Optional[int] = None, warmup_steps_backward: Optional[int] = None,
                  steps_forward: Optional[int] = None, steps_backward: Optional[int] = None):
    for name, value in (("warmup_steps_forward", warmup_steps_forward), ("warmup_steps_backward",
                        warmup_steps_backward), ("steps_forward", steps_forward), ("steps_backward", steps_backward)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"use_autotuner: {name} must be an int, got {value!r}")
    if forward_pass is not None:
        _Settings.autotuner_forward = bool(forward_pass)
    if backward_pass is not None:
        _Settings.autotuner_backward = bool(backward_pass)
    if thorough_mode_forward is not None:
        _Settings.autotuner_thorough_forward = bool(thorough_mode_forward)
    if thorough_mode_backward is not None:
        _Settings.autotuner_thorough_backward = bool(thorough_mode_backward)


def disable_autotuner():
    _Settings.autotuner_forward = _Settings.autotuner_backward = False
    _Settings.autotuner_thorough_forward = _Settings.autotuner_thorough_backward = False


def is_autotuner_enabled() -> bool:
    return _Settings.autotuner_forward or _Settings.autotuner_backward


def is_autotuner_enabled_for_forward() -> bool:
    return _Settings.autotuner_forward


def is_autotuner_enabled_for_backward() -> bool:
    return _Settings.autotuner_backward


def is_autotuner_thorough_for_forward() -> bool:
    return _Settings.autotuner_thorough_forward


def is_autotuner_thorough_for_backward() -> bool:
    return _Settings.autotuner_thorough_backward


_MEMORY = {"default": MemoryUsagePreference.Default, "strict": MemoryUsagePreference.Strict,
           "unrestricted": MemoryUsagePreference.Unrestricted}


def set_memory_usage_preference(pref: str = "default"):
    if pref not in _MEMORY:
        raise ValueError(f"set_memory_usage_preference: pref must be one of {sorted(_MEMORY)}, got {pref!r}")
    _Settings.memory = _MEMORY[pref]


def get_memory_usage_preference() -> MemoryUsagePreference:
    return _Settings.memory


def is_memory_usage_default() -> bool:
    return _Settings.memory is MemoryUsagePreference.Default


def is_memory_usage_strict() -> bool:
    return _Settings.memory is MemoryUsagePreference.Strict


def is_memory_usage_unrestricted() -> bool:
    return _Settings.memory is MemoryUsagePreference.Unrestricted


def use_tiled_na(mode: bool = True):
    _Settings.tiled_na = _mode("use_tiled_na", mode)


def is_tiled_na_enabled() -> bool:
    return _Settings.tiled_na


def use_gemm_na(mode: bool = True):
    _Settings.gemm_na = _mode("use_gemm_na", mode)


def is_gemm_na_enabled() -> bool:
    return _Settings.gemm_na


def use_tf32_in_gemm_na(mode: bool = True):
    _Settings.tf32_in_gemm_na = _mode("use_tf32_in_gemm_na", mode)


def is_tf32_in_gemm_na_enabled() -> bool:
    return _Settings.tf32_in_gemm_na


# ---- 0.20 / 0.21 context -------------------------------------------------------------------------
def allow_flex_compile(mode: bool = True, backprop: bool = False):
    _Settings.flex_compile = _mode("allow_flex_compile", mode)
    _Settings.flex_compile_backprop = _mode("allow_flex_compile", backprop) and mode


def allow_flex_compile_backprop(mode: bool = True):
    _Settings.flex_compile_backprop = _mode("allow_flex_compile_backprop", mode)


def disable_flex_compile():
    _Settings.flex_compile = _Settings.flex_compile_backprop = False


def disable_flex_compile_backprop():
    _Settings.flex_compile_backprop = False


def is_flex_compile_allowed() -> bool:
    return _Settings.flex_compile


def is_flex_compile_backprop_allowed() -> bool:
    return _Settings.flex_compile_backprop


def no_configs(*args, **kwargs) -> list:
    """NATTEN 0.20's ``get_configs_for_*`` (tile configurations of its CUDA kernels): none here."""
    return []
