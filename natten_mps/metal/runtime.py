"""Shared Metal runtime for ``natten_mps`` and ``sage_mps``: shader loading, compiling, launching.

Calling convention (``torch.mps.compile_shader``, as implemented in PyTorch's
``torch/csrc/mps/Module.cpp``, read for torch 2.8-2.13, and mirrored by the emulator):

* ``lib = compile_shader(source)``; ``lib.<kernel>(*args, threads=..., group_size=...)``.
* Arguments bind in order to ``[[buffer(0)]]``, ``[[buffer(1)]]``, ...: a tensor binds as a ``device``
  buffer starting at its storage offset (we always pass contiguous tensors); a Python ``int`` binds
  as a 64-bit integer (declare ``constant long& n``); a Python ``float`` as a 32-bit ``float``.
* ``threads`` is the total grid (an int or up to 3 ints), dispatched like ``dispatchThreads``:
  the last threadgroup of each dimension may be partial; when omitted it is the ``numel`` of the
  first tensor argument. ``group_size`` is the threadgroup size, with as many dimensions as
  ``threads`` (default: as many threads as the pipeline allows, capped by the grid).
* Python lists of ints/floats also bind (as arrays) on MPS; this project does not use them and the
  emulator rejects them, so geometry travels in small int64 tensors instead.

Shader sources are ``.metal`` files under ``shaders/`` (shipped in the wheel as
``natten_mps/_shaders``). A local ``#include "file"`` is inlined before compiling, for both the
MPS compiler and the emulator, so both compile byte-identical source.

Emulation: with ``NATTEN_MPS_EMULATE=1`` or :func:`set_emulation(True) <set_emulation>`, CPU
tensors take the Metal code path of both packages with the CPU emulator in place of
``compile_shader``; everything else (argument handling, dispatch, autograd) is unchanged.

Metal on CUDA: with ``NATTEN_MPS_METAL_ON_CUDA=1`` or :func:`set_metal_on_cuda(True)
<set_metal_on_cuda>`, CUDA tensors take the Metal code path too, with the MSL -> CUDA back end
(:mod:`natten_mps.metal.cuda`, needs ``nvcc``) in place of ``compile_shader``: the same ``.metal``
sources run on an NVIDIA GPU, to check them under real concurrency and to rank kernel designs.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Dict

import torch

__all__ = ["shader_dir", "shader_source", "library", "set_emulation", "emulation_enabled",
           "set_metal_on_cuda", "metal_on_cuda_enabled", "set_poison_outputs", "poison_outputs",
           "mps_available", "runs_metal", "ShaderCompileError", "precompile", "set_noop_launches",
           "noop_launches_enabled", "noop_launches", "NoopLibrary"]


class ShaderCompileError(RuntimeError):
    """A shader failed to compile; the message names the file and carries the compiler's output."""


def shader_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_shaders", here.parent / "shaders"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("Metal shader sources not found (expected natten_mps/_shaders or ./shaders)")


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"\s*$', re.M)


def shader_source(name: str) -> str:
    """Source of ``shaders/<name>`` with local ``#include "..."`` files inlined (once each)."""
    root = shader_dir()
    seen = set()

    def expand(rel: str) -> str:
        path = (root / rel).resolve()
        if path in seen:
            return ""
        seen.add(path)
        text = path.read_text()
        return _INCLUDE_RE.sub(lambda m: expand(str(Path(rel).parent / m.group(1))), text)

    return expand(name)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


_emulate = _env_flag("NATTEN_MPS_EMULATE")
_metal_on_cuda = _env_flag("NATTEN_MPS_METAL_ON_CUDA")
_poison = _env_flag("NATTEN_MPS_POISON")


def set_emulation(enabled: bool) -> None:
    """Make CPU tensors take the Metal code path, with the CPU emulator compiling the shaders."""
    global _emulate
    _emulate = bool(enabled)


def emulation_enabled() -> bool:
    return _emulate


def set_metal_on_cuda(enabled: bool) -> None:
    """Make CUDA tensors take the Metal code path, with the MSL -> CUDA back end compiling the shaders."""
    global _metal_on_cuda
    _metal_on_cuda = bool(enabled)


def metal_on_cuda_enabled() -> bool:
    return _metal_on_cuda


def set_poison_outputs(enabled: bool) -> None:
    """Fill Metal-path outputs with NaN before the kernels write them on every device (always on CPU)."""
    global _poison
    _poison = bool(enabled)


def poison_outputs(device: torch.device) -> bool:
    return device.type == "cpu" or _poison


def mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def runs_metal(t: torch.Tensor) -> bool:
    """Whether tensors on ``t``'s device run the Metal kernels (MPS; CPU under emulation; CUDA under
    :func:`set_metal_on_cuda`)."""
    kind = t.device.type
    return kind == "mps" or (_emulate and kind == "cpu") or (_metal_on_cuda and kind == "cuda")


_libs: Dict[tuple, object] = {}
_lock = threading.Lock()


def library(name: str, device_type: str):
    """Compiled library for ``shaders/<name>``: ``compile_shader`` on MPS, the emulator on CPU, the
    MSL -> CUDA back end on CUDA."""
    if _noop:
        return _noop_library(name)
    key = (name, device_type)
    lib = _libs.get(key)
    if lib is not None:
        return lib
    with _lock:
        lib = _libs.get(key)
        if lib is None:
            source = shader_source(name)
            if device_type == "mps":
                try:
                    lib = torch.mps.compile_shader(source)
                except Exception as e:  # noqa: BLE001 - re-raised with the file name
                    raise ShaderCompileError(f"compiling shaders/{name} failed:\n{e}") from e
            elif device_type == "cuda":
                from . import cuda
                try:
                    lib = cuda.compile(source, label=f"shaders/{name}")
                except cuda.ShaderCompileError as e:
                    raise ShaderCompileError(f"compiling shaders/{name} for CUDA failed:\n{e}") from e
            else:
                from . import emulator
                try:
                    lib = emulator.compile(source, label=f"shaders/{name}")
                except emulator.ShaderCompileError as e:
                    raise ShaderCompileError(f"compiling shaders/{name} for the emulator failed:\n{e}") from e
            _libs[key] = lib
    return lib


def precompile(names) -> None:
    """Compile ``names`` for MPS now (called at import time when MPS is available)."""
    if mps_available():
        for n in names:
            library(n, "mps")


# ---- No-op launches: the host's cost of a call without any kernel's --------------------------------
# With no-op launches on, :func:`library` returns a :class:`NoopLibrary` for every device: the same
# kernel names as the compiled library (read from the shader source by the MSL front end, which
# only runs the C preprocessor, no compiler), each callable like a ``compile_shader`` kernel but
# running nothing. Every Python step of a call (checks, geometry, allocation, poison fills,
# argument lists, the launch call itself) still runs, so a timed call measures the host alone.
# Outputs come back allocated (NaN-poisoned on CPU, see ``poison_outputs``) and unwritten.

_noop = _env_flag("NATTEN_MPS_NOOP_LAUNCHES")
_noop_libs: Dict[str, "NoopLibrary"] = {}


class NoopKernel:
    """A kernel that runs nothing: ``kernel(*args, threads=..., group_size=...)`` checks the number
    of arguments against the kernel's ``[[buffer(i)]]`` parameters (a ``TypeError`` if it differs)
    and counts the launch in ``launches``."""

    max_threads_per_threadgroup = 1024
    thread_execution_width = 32

    def __init__(self, name: str, n_args: int) -> None:
        self.name, self.n_args, self.launches = name, n_args, 0

    def __call__(self, *args, threads=None, group_size=None) -> None:
        if len(args) != self.n_args:
            raise TypeError(f"kernel {self.name} takes {self.n_args} arguments, got {len(args)}")
        self.launches += 1


class NoopLibrary:
    """``lib.<kernel>`` for every kernel of ``shaders/<name>``, as :class:`NoopKernel`;
    ``launches()`` is the total launch count, ``kernel_names()`` the kernels."""

    def __init__(self, name: str) -> None:
        from . import msl
        self.label = f"shaders/{name} (no-op launches)"
        specs = msl.find_kernels(msl.preprocess(shader_source(name), self.label))
        self._kernels = {k.host_name: NoopKernel(k.host_name, sum(p.kind in ("buffer", "scalar") for p in k.params))
                         for k in specs}

    def __getattr__(self, attr: str):
        kernels = self.__dict__.get("_kernels", {})
        if attr in kernels:
            return kernels[attr]
        raise AttributeError(f"{self.__dict__.get('label', 'library')} has no kernel {attr!r}")

    def kernel_names(self):
        return list(self._kernels)

    def launches(self) -> int:
        return sum(k.launches for k in self._kernels.values())


def _noop_library(name: str) -> NoopLibrary:
    lib = _noop_libs.get(name)
    if lib is None:
        with _lock:
            lib = _noop_libs.get(name)
            if lib is None:
                lib = _noop_libs[name] = NoopLibrary(name)
    return lib


def set_noop_launches(enabled: bool) -> None:
    """Replace every kernel launch by a no-op (``NATTEN_MPS_NOOP_LAUNCHES=1`` at import): for
    measuring the host's cost of a call. Off by default; outputs are left unwritten."""
    global _noop
    _noop = bool(enabled)


def noop_launches_enabled() -> bool:
    return _noop


@contextlib.contextmanager
def noop_launches(enabled: bool = True):
    """``with noop_launches(): ...``: :func:`set_noop_launches` for the block, restored after."""
    previous = _noop
    set_noop_launches(enabled)
    try:
        yield
    finally:
        set_noop_launches(previous)
