"""The GPU the Metal host sizes its tiles for: core count, threadgroup target, tile shape, limits.

The host's tiling choices (``backends.metal``: SIMD-groups a tile starts with, staged chunk bytes,
how many threadgroups fill the GPU, the widest head-dim slice of the backward) read a
:class:`GPUProfile` instead of asking ``device.type``, so the emulator makes the choices a Mac
makes for the same shapes.

Which profile applies (:func:`profile_for`):

1. ``set_profile(name)`` or ``NATTEN_MPS_GPU_PROFILE=<name>``, for every device (also CUDA tensors
   under the Metal-on-CUDA switch, to run Apple's tilings on the translated kernels);
2. otherwise on MPS: the device's profile, from ``torch.backends.mps.get_name()`` and
   ``get_core_count()`` (an Apple profile with the reported core count); where torch cannot say,
   :data:`DEFAULT_APPLE` (32 cores: the M-series Max GPUs have 24-40);
3. on CUDA: ``"cuda"``, from the device's multiprocessor count;
4. on CPU (the emulator) and ``meta``: :data:`DEFAULT_EMULATED`, an M-series profile, so the test
   suite runs the kernels a Mac launches for each shape. ``"none"`` restores the large tiles of a
   GPU that is never short of work (threadgroup target 0).

Apple profiles (sources in docs/tuning.md): 128 threads a threadgroup (4 SIMD-groups), 12 KB staged
chunks, a target of ``cores x resident threadgroups a core``, where a core holds about 60 KB of
threadgroup memory and wants about 24 resident SIMD-groups; the backward's slices at most 16 floats
wide (per-lane state well under the ~128 32-bit registers an Apple GPU thread has before occupancy
drops). Limits every profile shares with Metal: 32 KB threadgroup memory, 1024 threads.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import torch

ENV = "NATTEN_MPS_GPU_PROFILE"
DEFAULT_EMULATED = "apple-m1-max"
DEFAULT_APPLE = "apple-m1-max"
MAX_THREADGROUP_MEMORY = 32768          # maxThreadgroupMemoryLength on Apple GPUs
MAX_THREADS = 1024                      # maxTotalThreadsPerThreadgroup


@dataclass(frozen=True)
class GPUProfile:
    """What the host sizes tiles for.

    ``cores``: GPU cores (multiprocessors on CUDA); ``simdgroups``: SIMD-groups a tile starts with
    (``simdgroups_own`` for the own-window walk); ``stage_bytes``: threadgroup bytes of a staged
    chunk (at most the shader's declared ``kStageBytes``); ``core_memory``: threadgroup memory a core
    holds; ``resident_simdgroups``: SIMD-groups a core wants resident to keep its ALUs busy;
    ``backward_slice``: the widest head-dim slice the backward takes where a narrower one covers the
    head dim in 8 lanes (0: no cap); ``target``: threadgroups that fill the GPU, or None to derive
    it as ``cores x min(resident_simdgroups / simdgroups, core_memory / stage_bytes)``.
    """
    name: str
    family: str                          # "apple", "cuda" or "none"
    cores: int
    simdgroups: int
    simdgroups_own: int
    stage_bytes: int
    core_memory: int = 0
    resident_simdgroups: int = 0
    backward_slice: int = 0
    target: Optional[int] = None
    max_threadgroup_memory: int = MAX_THREADGROUP_MEMORY
    max_threads: int = MAX_THREADS

    def __post_init__(self):
        if self.simdgroups not in (1, 2, 4, 8) or self.simdgroups_own not in (1, 2, 4, 8):
            raise ValueError(f"GPUProfile {self.name!r}: simdgroups must be 1, 2, 4 or 8, got "
                             f"{self.simdgroups} / {self.simdgroups_own}")
        if not 0 < self.stage_bytes <= self.max_threadgroup_memory:
            raise ValueError(f"GPUProfile {self.name!r}: stage_bytes must be in (0, "
                             f"{self.max_threadgroup_memory}], got {self.stage_bytes}")
        if 32 * max(self.simdgroups, self.simdgroups_own) > self.max_threads:
            raise ValueError(f"GPUProfile {self.name!r}: {self.simdgroups} SIMD-groups exceed "
                             f"{self.max_threads} threads")

    def threadgroups_per_core(self) -> int:
        """Threadgroups of ``simdgroups`` SIMD-groups and ``stage_bytes`` a core keeps resident."""
        by_simd = max(1, self.resident_simdgroups // self.simdgroups)
        by_memory = max(1, self.core_memory // self.stage_bytes) if self.core_memory else by_simd
        return min(by_simd, by_memory)

    def target_threadgroups(self) -> int:
        """Threadgroups that keep every core busy; below it the host shrinks tiles (fewer SIMD-groups
        a tile, then narrower slices) and takes the small-problem kernels."""
        if self.target is not None:
            return self.target
        return self.cores * self.threadgroups_per_core()

    def with_cores(self, cores: int, name: Optional[str] = None) -> "GPUProfile":
        return dataclasses.replace(self, cores=int(cores), name=name or self.name)


def _apple(name: str, cores: int) -> GPUProfile:
    # 12 KB chunks and 128 threads: 5 threadgroups (20 SIMD-groups) a core of ~60 KB.
    return GPUProfile(name=name, family="apple", cores=cores, simdgroups=4, simdgroups_own=4,
                      stage_bytes=12288, core_memory=60 * 1024, resident_simdgroups=24, backward_slice=16)


PROFILES: Dict[str, GPUProfile] = {
    "apple-m1": _apple("apple-m1", 8),
    "apple-m1-max": _apple("apple-m1-max", 32),
    "apple-m2": _apple("apple-m2", 10),
    "apple-m3": _apple("apple-m3", 10),
    "apple-m3-max": _apple("apple-m3-max", 40),
    # The translated kernels on an NVIDIA H200 (132 SMs): 1.5 threadgroups an SM, 2 SIMD-groups a tile
    # (4 for the own-window walk), as the proxy's per-kernel sweeps measured (backends.metal).
    "h200": GPUProfile(name="h200", family="cuda", cores=132, simdgroups=2, simdgroups_own=4,
                       stage_bytes=12288, target=198),
    # A GPU never short of work: the large, byte-efficient tiles everywhere (256 threads).
    "none": GPUProfile(name="none", family="none", cores=0, simdgroups=8, simdgroups_own=8,
                       stage_bytes=12288, target=0),
}
PROFILES["cuda"] = PROFILES["h200"]

_lock = threading.Lock()
_selected: Optional[str] = None
_device_cache: Dict[tuple, GPUProfile] = {}


def get(name: str) -> GPUProfile:
    """The named profile (:data:`PROFILES`); ValueError naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"GPU profile must be one of {sorted(PROFILES)}, got {name!r}") from None


def set_profile(name: Optional[str]) -> None:
    """Select the profile the host sizes tiles for, on every device (None: back to the device's own;
    ``NATTEN_MPS_GPU_PROFILE`` then applies if set)."""
    global _selected
    if name is not None:
        get(name)
    with _lock:
        _selected = name


def selected() -> Optional[str]:
    """The profile chosen by :func:`set_profile` or ``NATTEN_MPS_GPU_PROFILE`` (None: per device)."""
    if _selected is not None:
        return _selected
    env = os.environ.get(ENV)
    if env:
        get(env)
        return env
    return None


def _mps_profile() -> GPUProfile:
    name, cores = None, None
    try:
        name = torch.backends.mps.get_name()
        cores = int(torch.backends.mps.get_core_count())
    except Exception:                     # older torch: no device query
        pass
    base = PROFILES[DEFAULT_APPLE]
    if name:
        key = "apple-" + "-".join(name.lower().replace("apple", "").split())
        base = PROFILES.get(key, base)
    if cores:
        return base.with_cores(cores, name=f"apple:{name or 'mps'}:{cores}")
    return base


def _cuda_profile(device: torch.device) -> GPUProfile:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return dataclasses.replace(PROFILES["h200"], name=f"cuda:{sms}", cores=sms, target=3 * sms // 2)


def profile_for(device: torch.device) -> GPUProfile:
    """The profile the host sizes tiles for on ``device`` (see the module docstring for the order)."""
    name = selected()
    if name is not None:
        return PROFILES[name]
    kind = device.type
    if kind in ("mps", "cuda"):
        key = (kind, device.index)
        prof = _device_cache.get(key)
        if prof is None:
            prof = _mps_profile() if kind == "mps" else _cuda_profile(device)
            _device_cache[key] = prof
        return prof
    return PROFILES[DEFAULT_EMULATED]
