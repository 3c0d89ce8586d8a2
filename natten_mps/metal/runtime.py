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

Build units and fallback (see :func:`library`): a shader is compiled in units, one per dtype of its
instantiations (``shader_units``), so that one construct a compiler rejects costs only that kernel
family. On MPS a family that fails to compile, to create a pipeline or to launch is marked
unavailable for the process, warned about once (:class:`MetalFallbackWarning`) and its ops run on
the pure path; ``NATTEN_MPS_STRICT=1`` / :func:`set_strict(True) <set_strict>` makes it raise.

Metal on CUDA: with ``NATTEN_MPS_METAL_ON_CUDA=1`` or :func:`set_metal_on_cuda(True)
<set_metal_on_cuda>`, CUDA tensors take the Metal code path too, with the MSL -> CUDA back end
(:mod:`natten_mps.metal.cuda`, needs ``nvcc``) in place of ``compile_shader``: the same ``.metal``
sources run on an NVIDIA GPU, to check them under real concurrency and to rank kernel designs.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

__all__ = ["shader_dir", "shader_source", "library", "set_emulation", "emulation_enabled",
           "set_metal_on_cuda", "metal_on_cuda_enabled", "set_poison_outputs", "poison_outputs",
           "mps_available", "runs_metal", "ShaderCompileError", "precompile",
           "shader_units", "unit_source", "unit_of", "family_available", "family_report", "build_log",
           "thread_limit", "set_strict", "strict", "FamilyUnavailableError", "MetalFallbackWarning",
           "pure_on_failure", "build_every_family", "set_noop_launches", "noop_launches_enabled", "noop_launches",
           "NoopLibrary"]


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
    """Whether CPU tensors take the Metal code path through the CPU emulator (:func:`set_emulation`,
    ``NATTEN_MPS_EMULATE=1``). Default False."""
    return _emulate


def set_metal_on_cuda(enabled: bool) -> None:
    """Make CUDA tensors take the Metal code path, with the MSL -> CUDA back end compiling the shaders."""
    global _metal_on_cuda
    _metal_on_cuda = bool(enabled)


def metal_on_cuda_enabled() -> bool:
    """Whether CUDA tensors take the Metal code path through the MSL -> CUDA back end
    (:func:`set_metal_on_cuda`, ``NATTEN_MPS_METAL_ON_CUDA=1``). Default False."""
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


# ------------------------------------------------------------------------------------------------
# Build units, kernel families and the fallback to the pure path
# ------------------------------------------------------------------------------------------------
class FamilyUnavailableError(RuntimeError):
    """A kernel family is unavailable in this process (it failed to compile, to create a pipeline or
    to launch); raised to the Metal implementations, which then run the pure path
    (:func:`pure_on_failure`). Never raised out of a public op."""


class MetalFallbackWarning(RuntimeWarning):
    """A Metal kernel family failed on this machine; its ops run on the pure path (once per family)."""


# A top-level line invoking an instantiation macro: ``INSTANTIATE_X(float16, half)`` at column 0, not
# continuing a ``#define``. Its first argument (the dtype name in kernel names) is its build unit.
_INSTANTIATION_LINE_RE = re.compile(r"^(INSTANTIATE_\w+)[ \t]*\([ \t]*(\w+)[ \t]*,[^\n]*\)[ \t]*;?[ \t]*$", re.M)
WHOLE_SOURCE = "all"


def _instantiation_lines(source: str):
    for m in _INSTANTIATION_LINE_RE.finditer(source):
        before = source[:m.start()].rstrip("\n")
        if not before.endswith("\\"):
            yield m


def shader_units(name: str) -> List[str]:
    """Build units of ``shaders/<name>``: the first arguments of its top-level instantiation lines
    (``float32``, ``float16``, ``bfloat16``), in order; ``["all"]`` for a source without them."""
    units: List[str] = []
    for m in _instantiation_lines(shader_source(name)):
        if m.group(2) not in units:
            units.append(m.group(2))
    return units or [WHOLE_SOURCE]


def unit_source(name: str, unit: str) -> str:
    """The source compiled for one unit: ``shaders/<name>`` with the other units' top-level
    instantiation lines blanked (line numbers kept), so the ``.metal`` file stays one file and a unit
    instantiates only its own kernels."""
    source = shader_source(name)
    if unit == WHOLE_SOURCE:
        return source
    out, pos = [], 0
    for m in _instantiation_lines(source):
        if m.group(2) != unit:
            out.append(source[pos:m.start()])
            pos = m.end()
    out.append(source[pos:])
    return "".join(out)


def unit_of(name: str, kernel: str) -> str:
    """The unit holding ``kernel`` (its name carries the unit's dtype name as a ``_``-separated part)."""
    parts = kernel.split("_")
    for unit in shader_units(name):
        if unit in parts:
            return unit
    return WHOLE_SOURCE


def _strict_from_env() -> Optional[bool]:
    raw = os.environ.get("NATTEN_MPS_STRICT", "")
    if raw == "":
        return None
    return raw.lower() in ("1", "true", "yes", "on")


_strict: Optional[bool] = _strict_from_env()


def set_strict(enabled: Optional[bool]) -> None:
    """``True``: a kernel family's failure raises (tests, development). ``False``: it falls back to the
    pure path with one warning, on every back end. ``None`` (default; ``NATTEN_MPS_STRICT`` unset):
    fall back on MPS, raise under the emulator and the CUDA back end (where a failure is a bug the
    tests must see)."""
    global _strict
    _strict = None if enabled is None else bool(enabled)


def strict(device_type: str) -> bool:
    """Whether a family failure on ``device_type`` raises instead of falling back."""
    return device_type != "mps" if _strict is None else _strict


_unavailable: Dict[tuple, dict] = {}       # (shader, unit) -> what failed (for the whole process)
_build_log: List[dict] = []                # one entry per unit compiled: timing, size, outcome
_unit_libs: Dict[tuple, object] = {}
_limits: Dict[tuple, int] = {}
_libs: Dict[tuple, object] = {}
_lock = threading.RLock()


def _macos() -> str:
    version = platform.mac_ver()[0]
    return f"macOS {version}" if version else f"not macOS ({platform.system()} {platform.release()})"


def _fail(key: tuple, stage: str, kernel: str, error: BaseException) -> None:
    """Record a family failure; warn once per family (or raise in strict mode)."""
    shader, unit, device_type = key
    if strict(device_type):
        raise error
    first = (shader, unit) not in _unavailable
    _unavailable.setdefault((shader, unit), {"shader": f"shaders/{shader}", "unit": unit, "device": device_type,
                                  "stage": stage, "kernel": kernel, "error": str(error)})
    if first:
        warnings.warn(
            f"natten_mps: the Metal kernel family shaders/{shader} [{unit}] is unavailable on {device_type} "
            f"({stage} failed; kernel {kernel}; torch {torch.__version__}; {_macos()}); its ops run on the "
            f"pure PyTorch path for this process. Please report this with `python -m natten_mps.doctor`. "
            f"Compiler/runtime message:\n{error}", MetalFallbackWarning, stacklevel=3)


def family_available(name: str, unit: str, device_type: str = "mps") -> bool:
    """Whether kernel family (``shaders/<name>``, ``unit``) is still in use. A family that failed is
    unavailable for the rest of the process, on every device (``device_type`` is accepted for the
    callers' convenience: a process uses one Metal device)."""
    return not _unavailable or (name, unit) not in _unavailable


def family_report() -> List[dict]:
    """The unavailable families: shader, unit, device, stage (compile/pipeline/launch), kernel, error."""
    return [dict(v) for v in _unavailable.values()]


def build_log() -> List[dict]:
    """Per compiled unit: shader, unit, device, source bytes, kernels, seconds, ok."""
    return [dict(e) for e in _build_log]


def _compile(source: str, name: str, unit: str, device_type: str):
    label = f"shaders/{name}" + ("" if unit == WHOLE_SOURCE else f" [{unit}]")
    if device_type == "mps":
        return torch.mps.compile_shader(source)
    if device_type == "cuda":
        from . import cuda
        try:
            return cuda.compile(source, label=label)
        except cuda.ShaderCompileError as e:
            raise ShaderCompileError(f"compiling {label} for CUDA failed:\n{e}") from e
    from . import emulator
    try:
        return emulator.compile(source, label=label)
    except emulator.ShaderCompileError as e:
        raise ShaderCompileError(f"compiling {label} for the emulator failed:\n{e}") from e


def _unit_kernels(source: str, unit: str) -> str:
    """The kernels a unit instantiates, as name patterns (``attn_forward_float16_*``, ...)."""
    names = []
    for n in re.findall(r"\bkernel\s+void\s+([A-Za-z_]\w*)", source):
        if n not in names:
            names.append(n)
    return ", ".join(f"{n}_{unit}*" for n in names) if unit != WHOLE_SOURCE else ", ".join(names)


def _unit_library(name: str, unit: str, device_type: str):
    """The compiled library of one unit (compiled once per process; a failure marks the family)."""
    key = (name, unit, device_type)
    lib = _unit_libs.get(key)
    if lib is not None:
        return lib
    with _lock:
        lib = _unit_libs.get(key)
        if lib is not None:
            return lib
        if not family_available(*key):
            raise FamilyUnavailableError(f"shaders/{name} [{unit}] is unavailable on {device_type}")
        source = unit_source(name, unit)
        start = time.perf_counter()
        try:
            lib = _compile(source, name, unit, device_type)
        except Exception as e:  # noqa: BLE001 - any compiler failure makes the family unavailable
            _build_log.append({"shader": name, "unit": unit, "device": device_type, "source_bytes": len(source),
                               "seconds": time.perf_counter() - start, "ok": False})
            err = e if isinstance(e, ShaderCompileError) else ShaderCompileError(
                f"compiling shaders/{name} [{unit}] failed:\n{e}")
            _fail(key, "compile", _unit_kernels(source, unit), err)
            raise FamilyUnavailableError(str(err)) from e
        _build_log.append({"shader": name, "unit": unit, "device": device_type, "source_bytes": len(source),
                           "seconds": time.perf_counter() - start, "ok": True})
        _unit_libs[key] = lib
    return lib


def _refusal(device_type: str) -> tuple:
    """Exceptions that mean "this pipeline or launch is refused" on ``device_type``: on MPS any
    exception of ``compile_shader``'s kernel objects; under the emulator and the CUDA back end only
    Metal's limits (their other errors, out-of-bounds accesses and races, are shader bugs)."""
    if device_type == "mps":
        return (Exception,)
    from .msl import LaunchRefusedError
    return (LaunchRefusedError,)


def _check_group(name: str, kernel, group_size) -> None:
    if group_size is None:
        return
    dims = [group_size] if isinstance(group_size, int) else list(group_size)
    n = 1
    for d in dims:
        n *= int(d)
    limit = int(getattr(kernel, "max_threads_per_threadgroup", 1024))
    if n > limit:
        from .msl import LaunchRefusedError
        raise LaunchRefusedError(f"kernel {name}: a threadgroup of {n} threads exceeds the pipeline's "
                                 f"max_threads_per_threadgroup ({limit})")


class _GuardedKernel:
    """A kernel whose pipeline-creation or launch failure marks its family unavailable."""

    __slots__ = ("_kernel", "_key", "_name")

    def __init__(self, kernel, key: tuple, name: str) -> None:
        self._kernel, self._key, self._name = kernel, key, name

    def __getattr__(self, attr):
        return getattr(self._kernel, attr)

    def __call__(self, *args, **kwargs):
        if not family_available(*self._key):
            raise FamilyUnavailableError(f"shaders/{self._key[0]} [{self._key[1]}] is unavailable")
        try:
            if self._key[2] == "mps":       # never dispatch a larger group than the pipeline allows
                _check_group(self._name, self._kernel, kwargs.get("group_size"))
            return self._kernel(*args, **kwargs)
        except _refusal(self._key[2]) as e:
            _fail(self._key, "launch", self._name, e)
            raise FamilyUnavailableError(str(e)) from e


class ShaderLibrary:
    """``library(name, device_type)``: ``lib.<kernel>`` is a kernel of ``shaders/<name>``, from the
    unit that holds it (compiled on first use, or at import on MPS), guarded so that a failure falls
    back to the pure path (:func:`pure_on_failure`)."""

    def __init__(self, name: str, device_type: str) -> None:
        self.name, self.device_type = name, device_type
        self.label = f"shaders/{name}"
        self._kernels: Dict[str, _GuardedKernel] = {}

    def __getattr__(self, kernel: str):
        if kernel.startswith("__"):
            raise AttributeError(kernel)
        found = self.__dict__["_kernels"].get(kernel)
        if found is not None:
            return found
        unit = unit_of(self.name, kernel)
        key = (self.name, unit, self.device_type)
        lib = _unit_library(*key)
        if not family_available(*key):
            raise FamilyUnavailableError(f"shaders/{self.name} [{unit}] is unavailable on {self.device_type}")
        try:
            obj = getattr(lib, kernel)          # pipeline creation on MPS
        except AttributeError:
            raise
        except _refusal(self.device_type) as e:
            _fail(key, "pipeline", kernel, e)
            raise FamilyUnavailableError(str(e)) from e
        guarded = _GuardedKernel(obj, key, kernel)
        self._kernels[kernel] = guarded
        return guarded

    def kernel_names(self) -> List[str]:
        names: List[str] = []
        for unit in shader_units(self.name):
            names += _kernel_names(_unit_library(self.name, unit, self.device_type), self.name, unit)
        return names


def library(name: str, device_type: str) -> ShaderLibrary:
    """Kernels of ``shaders/<name>``: ``compile_shader`` on MPS, the emulator on CPU, the MSL -> CUDA
    back end on CUDA; compiled per unit (:func:`shader_units`) on first use."""
    if _noop:
        return _noop_library(name)
    key = (name, device_type)
    lib = _libs.get(key)
    if lib is None:
        with _lock:
            lib = _libs.setdefault(key, ShaderLibrary(name, device_type))
    return lib


def thread_limit(name: str, device_type: str, unit: str, kernels: Optional[List[str]] = None,
                 contains: Optional[str] = None) -> int:
    """The lowest ``max_threads_per_threadgroup`` among ``kernels`` of family (``name``, ``unit``)
    (default: all of them, or those whose name contains ``contains``), as their compiled pipelines
    report it (1024 on ``meta``). On MPS this creates those pipelines, once. A family that cannot be
    built reports 0."""
    if device_type == "meta":
        return 1024
    if not family_available(name, unit, device_type):
        return 0
    if device_type != "mps":            # every emulated or translated pipeline reports the same limit
        from . import msl
        return msl.emulated_max_threads()
    key = (name, unit, device_type, tuple(kernels) if kernels else None, contains)
    limit = _limits.get(key)
    if limit is None:
        try:
            lib = library(name, device_type)
            names = kernels or [k for k in _kernel_names(_unit_library(name, unit, device_type), name, unit)
                                if contains is None or contains in k]
            limit = min((int(getattr(getattr(lib, k), "max_threads_per_threadgroup", 1024)) for k in names),
                        default=1024)     # unknown: the dispatch check below still refuses a larger group
        except FamilyUnavailableError:
            limit = 0
        _limits[key] = limit
    return limit


def _kernel_names(lib, name: Optional[str] = None, unit: Optional[str] = None) -> List[str]:
    """Kernel names of a compiled unit: the back ends list them; for ``compile_shader``'s libraries
    ``dir()``, else (with ``name`` and ``unit``) the MSL front end's reading of the unit's source
    (needs a C preprocessor); ``[]`` when neither can tell."""
    names = lib.__dict__.get("_kernels") if hasattr(lib, "__dict__") else None
    if names:
        return list(names)
    try:
        listed = [n for n in dir(lib) if not n.startswith("_")]
    except Exception:  # noqa: BLE001
        listed = []
    if listed or name is None:
        return listed
    try:
        from . import msl
        return [k.host_name for k in msl.find_kernels(msl.preprocess(unit_source(name, unit), name))]
    except Exception:  # noqa: BLE001 - no preprocessor on this machine
        return []


def pure_on_failure(fallback):
    """Decorator for a Metal implementation: when a kernel family turns out unavailable
    (:class:`FamilyUnavailableError`), run ``fallback`` (same signature: the pure path) instead."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except FamilyUnavailableError:
                return fallback(*args, **kwargs)
        return run
    return wrap


def build_every_family(names, device_type: str = "mps") -> List[dict]:
    """Compile every unit of ``names`` for ``device_type`` and create every pipeline; per unit a dict
    (shader, unit, kernels, seconds). Failures follow the strict rule (:func:`strict`): with
    ``set_strict(True)`` the first one raises, which is what CI's Metal build check wants."""
    rows = []
    for n in names:
        for unit in shader_units(n):
            start = time.perf_counter()
            lib = _unit_library(n, unit, device_type)
            kernels = [getattr(library(n, device_type), k) for k in _kernel_names(lib, n, unit)]
            rows.append({"shader": n, "unit": unit, "kernels": len(kernels),
                         "seconds": round(time.perf_counter() - start, 3)})
    return rows


def precompile(names) -> None:
    """On MPS, compile every unit of ``names`` now (called at import time): a unit that fails marks
    its family unavailable and warns (never raises, unless strict)."""
    if mps_available() and hasattr(torch, "mps") and hasattr(torch.mps, "compile_shader"):
        for n in names:
            for unit in shader_units(n):
                try:
                    _unit_library(n, unit, "mps")
                except FamilyUnavailableError:
                    pass


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
