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
    """NATTEN's CUDA-build probe, answered as ``torch.cuda.is_available()``.

    False on a Mac: code that moves tensors to CUDA when NATTEN reports CUDA keeps them on MPS/CPU.
    True only where a CUDA GPU is visible; this package's ops then run on CUDA tensors (PyTorch ops,
    or the Metal kernels through the MSL -> CUDA back end with ``NATTEN_MPS_METAL_ON_CUDA=1``).
    """
    return torch.cuda.is_available()


def has_half(device_index=None) -> bool:
    """Always True: every op here accepts float16 (Metal kernels on MPS, PyTorch ops elsewhere), so
    code gated on NATTEN's half-precision probe takes its fp16 path. ``device_index`` is ignored.
    """
    return True


def has_bfloat(device_index=None) -> bool:
    """Always True: every op here accepts bfloat16 (Metal kernels on MPS, PyTorch ops elsewhere).
    ``device_index`` is ignored.
    """
    return True


def has_gemm(device_index=None) -> bool:
    """Always False: NATTEN's GEMM-based (tensor-core) kernels do not exist here, so code that asks keeps
    its non-GEMM path. ``has_tf32_gemm``/``has_fp32_gemm``/``has_fp64_gemm`` are this function.
    """
    return False


def has_fused_na(device_index=None) -> bool:
    """Always True (``has_fna`` is this function): fused neighborhood attention runs on every device
    here (Metal kernels on Apple GPUs, PyTorch ops elsewhere), so code takes its fused path.
    """
    return True


has_fna = has_fused_na
has_tf32_gemm = has_fp32_gemm = has_fp64_gemm = has_gemm


# ---- 0.15 switches (0.17 kept them, deprecated) --------------------------------------------------
def enable_tf32() -> bool:
    """No TF32 GEMM kernels here: returns False, as NATTEN did where TF32 GEMM was unavailable."""
    return False


def disable_tf32() -> bool:
    """NATTEN 0.15's switch; no TF32 GEMM kernels here, nothing changes. Returns False."""
    return False


def enable_tiled_na():
    """NATTEN 0.15's switch: records tiled NA as enabled (read by :func:`is_tiled_na_enabled`); chooses
    nothing in the computation."""
    _Settings.tiled_na = True


def disable_tiled_na():
    """NATTEN 0.15's switch: records tiled NA as disabled; chooses nothing in the computation."""
    _Settings.tiled_na = False


def enable_gemm_na():
    """NATTEN 0.15's switch: records GEMM NA as enabled (read by :func:`is_gemm_na_enabled`); chooses
    nothing in the computation."""
    _Settings.gemm_na = True


def disable_gemm_na():
    """NATTEN 0.15's switch: records GEMM NA as disabled; chooses nothing in the computation."""
    _Settings.gemm_na = False


# ---- 0.17 context --------------------------------------------------------------------------------
def use_deterministic_algorithms(mode: bool = True):
    """Record NATTEN's deterministic mode (default off); while on, enabling KV parallelism raises
    ``RuntimeError``. The ops here are deterministic anyway. ``mode`` not a bool: ``TypeError``."""
    _Settings.deterministic = _mode("use_deterministic_algorithms", mode)


def are_deterministic_algorithms_enabled() -> bool:
    """Whether :func:`use_deterministic_algorithms` turned NATTEN's deterministic mode on."""
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
    """Whether KV parallelism is recorded as on (default False); it chooses nothing here."""
    return _Settings.kv_parallelism


def use_fused_na(mode: bool = True, kv_parallel: bool = True, use_flex_attention: bool = False,
                 force_flex_attention: bool = False):
    """Enable (default) or disable fused NA, as NATTEN 0.17 (``use_fna`` is this function).

    ``use_fused_na(False)`` sends the 0.17 modules down their split path (explicit weights, attention
    dropout) and clears the flex and KV-parallel settings; ``kv_parallel`` goes through
    :func:`use_kv_parallelism_in_fused_na`; the flex flags are recorded only. ``mode`` not a bool:
    ``TypeError``; KV parallelism in deterministic mode: ``RuntimeError``.
    """
    if not _mode("use_fused_na", mode):
        _Settings.fused_na = _Settings.flex_attention = _Settings.force_flex_attention = False
        use_kv_parallelism_in_fused_na(False)
        return
    use_kv_parallelism_in_fused_na(kv_parallel)
    _Settings.fused_na = True
    _Settings.flex_attention = bool(use_flex_attention)
    _Settings.force_flex_attention = bool(force_flex_attention)


def is_fused_na_enabled() -> bool:
    """Whether fused NA is enabled (default True here; ``is_fna_enabled`` is this function)."""
    return _Settings.fused_na


use_fna = use_fused_na
is_fna_enabled = is_fused_na_enabled


def use_flex_attention():
    """NATTEN's flex-attention switch: ``use_fused_na(True, use_flex_attention=True)``; recorded only."""
    return use_fused_na(True, use_flex_attention=True)


def force_flex_attention():
    """NATTEN's forced flex-attention switch: fused NA on with both flex flags set; recorded only."""
    return use_fused_na(True, use_flex_attention=True, force_flex_attention=True)


def use_autotuner(forward_pass: Optional[bool] = None, backward_pass: Optional[bool] = None,
                  thorough_mode_forward: Optional[bool] = None, thorough_mode_backward: Optional[bool] = None,
                  warmup_steps_forward: Optional[int] = None, warmup_steps_backward: Optional[int] = None,
                  steps_forward: Optional[int] = None, steps_backward: Optional[int] = None):
    """Record NATTEN 0.17's autotuner flags (``None`` leaves a flag as it is); there is nothing to tune
    here, so the computation does not change. The step counts must be ints or ``None``
    (``ValueError`` otherwise) and are not kept.
    """
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
    """Clear every autotuner flag (forward, backward, thorough modes)."""
    _Settings.autotuner_forward = _Settings.autotuner_backward = False
    _Settings.autotuner_thorough_forward = _Settings.autotuner_thorough_backward = False


def is_autotuner_enabled() -> bool:
    """Whether the autotuner is recorded as on for the forward or the backward pass (default False)."""
    return _Settings.autotuner_forward or _Settings.autotuner_backward


def is_autotuner_enabled_for_forward() -> bool:
    """Whether the autotuner is recorded as on for the forward pass."""
    return _Settings.autotuner_forward


def is_autotuner_enabled_for_backward() -> bool:
    """Whether the autotuner is recorded as on for the backward pass."""
    return _Settings.autotuner_backward


def is_autotuner_thorough_for_forward() -> bool:
    """Whether the autotuner's thorough mode is recorded as on for the forward pass."""
    return _Settings.autotuner_thorough_forward


def is_autotuner_thorough_for_backward() -> bool:
    """Whether the autotuner's thorough mode is recorded as on for the backward pass."""
    return _Settings.autotuner_thorough_backward


_MEMORY = {"default": MemoryUsagePreference.Default, "strict": MemoryUsagePreference.Strict,
           "unrestricted": MemoryUsagePreference.Unrestricted}


def set_memory_usage_preference(pref: str = "default"):
    """Record NATTEN 0.17's memory preference: ``"default"``, ``"strict"`` or ``"unrestricted"``
    (anything else: ``ValueError``). Chooses nothing here (no backward-pass tiling to restrict).
    """
    if pref not in _MEMORY:
        raise ValueError(f"set_memory_usage_preference: pref must be one of {sorted(_MEMORY)}, got {pref!r}")
    _Settings.memory = _MEMORY[pref]


def get_memory_usage_preference() -> MemoryUsagePreference:
    """The recorded memory preference (:class:`MemoryUsagePreference`, default ``Default``)."""
    return _Settings.memory


def is_memory_usage_default() -> bool:
    """Whether the recorded memory preference is ``Default``."""
    return _Settings.memory is MemoryUsagePreference.Default


def is_memory_usage_strict() -> bool:
    """Whether the recorded memory preference is ``Strict``."""
    return _Settings.memory is MemoryUsagePreference.Strict


def is_memory_usage_unrestricted() -> bool:
    """Whether the recorded memory preference is ``Unrestricted``."""
    return _Settings.memory is MemoryUsagePreference.Unrestricted


def use_tiled_na(mode: bool = True):
    """Record NATTEN 0.17's tiled-NA switch (default on); chooses nothing. ``mode`` not a bool: ``TypeError``."""
    _Settings.tiled_na = _mode("use_tiled_na", mode)


def is_tiled_na_enabled() -> bool:
    """The recorded tiled-NA switch (default True)."""
    return _Settings.tiled_na


def use_gemm_na(mode: bool = True):
    """Record NATTEN 0.17's GEMM-NA switch (default on); chooses nothing. ``mode`` not a bool: ``TypeError``."""
    _Settings.gemm_na = _mode("use_gemm_na", mode)


def is_gemm_na_enabled() -> bool:
    """The recorded GEMM-NA switch (default True; :func:`has_gemm` says no GEMM kernels exist)."""
    return _Settings.gemm_na


def use_tf32_in_gemm_na(mode: bool = True):
    """Record NATTEN 0.17's TF32-in-GEMM switch (default on); chooses nothing. ``mode`` not a bool:
    ``TypeError``."""
    _Settings.tf32_in_gemm_na = _mode("use_tf32_in_gemm_na", mode)


def is_tf32_in_gemm_na_enabled() -> bool:
    """The recorded TF32-in-GEMM switch (default True)."""
    return _Settings.tf32_in_gemm_na


# ---- 0.20 / 0.21 context -------------------------------------------------------------------------
def allow_flex_compile(mode: bool = True, backprop: bool = False):
    """Record NATTEN 0.20's permission to ``torch.compile`` its flex kernels (and, with ``backprop``, their
    backward); chooses nothing here. Non-bool arguments: ``TypeError``.
    """
    _Settings.flex_compile = _mode("allow_flex_compile", mode)
    _Settings.flex_compile_backprop = _mode("allow_flex_compile", backprop) and mode


def allow_flex_compile_backprop(mode: bool = True):
    """Record NATTEN 0.20's permission to compile the flex backward; chooses nothing. Non-bool: ``TypeError``."""
    _Settings.flex_compile_backprop = _mode("allow_flex_compile_backprop", mode)


def disable_flex_compile():
    """Clear both flex-compilation permissions."""
    _Settings.flex_compile = _Settings.flex_compile_backprop = False


def disable_flex_compile_backprop():
    """Clear the flex-backward compilation permission."""
    _Settings.flex_compile_backprop = False


def is_flex_compile_allowed() -> bool:
    """The recorded flex-compilation permission (default False)."""
    return _Settings.flex_compile


def is_flex_compile_backprop_allowed() -> bool:
    """The recorded flex-backward compilation permission (default False)."""
    return _Settings.flex_compile_backprop


def no_configs(*args, **kwargs) -> list:
    """NATTEN 0.20's ``get_configs_for_*`` (tile configurations of its CUDA kernels): none here."""
    return []
