"""CPU emulator for the Metal Shading Language subset used by this project.

``compile(source)`` mirrors ``torch.mps.compile_shader(source)``: it returns a library whose
attributes are the kernels of the source, called as ``lib.name(*args, threads=..., group_size=...)``
on CPU tensors with the same binding rules as the MPS runtime (see ``natten_mps.metal.runtime``).

How it works:

1. The source is rewritten into C++17 (``_rewrite``): pointers into ``device``/``constant``/
   ``threadgroup`` memory become checked pointers (``mtl::mptr<T>``) that bounds-check every access
   and count device bytes; ``threadgroup T name[N];`` becomes storage shared by the threadgroup,
   with a race detector; ``[[...]]`` attributes are recorded and removed.
2. Each host-visible kernel (a plain ``kernel`` function, or an explicit instantiation of a
   templated kernel named with ``[[host_name("...")]]``) gets a generated ``extern "C"`` launcher
   that binds buffers and scalars by argument index and fills the thread-position attributes.
3. g++ compiles it against ``emulator_shim/metal_stdlib`` into a shared object, cached by hash.
4. A launch runs the grid threadgroup by threadgroup. Kernels that synchronise (barriers,
   SIMD-group collectives) run each thread as a cooperative fiber, so a barrier is a real
   rendezvous of the group and SIMD collectives exchange values across 32 lanes.

Errors a GPU would turn into silent corruption (out-of-bounds access of a bound buffer or of a
threadgroup array, a barrier not reached by every thread, a threadgroup-memory race between two
barriers) raise :class:`MetalEmulatorError` subclasses naming the kernel.

Metal's limits are enforced as the Metal runtime would (:class:`msl.LaunchRefusedError` naming the
kernel): more than 32 KB of static threadgroup memory at pipeline creation (first ``lib.<kernel>``
access; also counted at dispatch from what a threadgroup allocates, :class:`ThreadgroupMemoryError`),
and a threadgroup larger than 1024 threads or than the pipeline's ``max_threads_per_threadgroup`` at
dispatch (1024 unless ``NATTEN_MPS_EMULATE_MAX_THREADS`` / ``msl.set_emulated_max_threads`` simulates
a lower pipeline limit).

Per launch the emulator counts threads, threadgroups, device bytes read/written (a ``constant``
buffer once a launch: uniform data served by the constant cache), barriers and SIMD collectives (:class:`LaunchStats`); :func:`counting` collects them for benchmarks.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from . import msl
from .msl import Kernel, ShaderCompileError

__all__ = [
    "MetalEmulatorError",
    "OutOfBoundsError",
    "BarrierDivergenceError",
    "ThreadgroupRaceError",
    "ThreadgroupMemoryError",
    "ShaderCompileError",
    "LaunchStats",
    "compile",
    "counting",
]

_SHIM_DIR = Path(__file__).with_name("emulator_shim")
_CXX_FLAGS = ["-std=c++17", "-O2", "-shared", "-fPIC", "-w", "-fno-strict-aliasing", "-fsigned-char"]


class MetalEmulatorError(RuntimeError):
    """A kernel did something that is undefined or silently wrong on a GPU."""


class OutOfBoundsError(MetalEmulatorError):
    pass


class BarrierDivergenceError(MetalEmulatorError):
    pass


class ThreadgroupRaceError(MetalEmulatorError):
    pass


class ThreadgroupMemoryError(MetalEmulatorError, msl.LaunchRefusedError):
    """A threadgroup allocated more than ``maxThreadgroupMemoryLength`` (32 KB): Metal refuses it."""


_ERROR_KINDS = {1: MetalEmulatorError, 2: OutOfBoundsError, 3: BarrierDivergenceError, 4: ThreadgroupRaceError,
                5: ThreadgroupMemoryError}


class _CStats(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in
                ("threads", "threadgroups", "bytes_read", "bytes_written", "barriers", "simd_ops")]


@dataclass
class LaunchStats:
    """What one launch (or a sum of launches) cost on the emulated GPU."""

    kernel: str = ""
    dispatches: int = 0
    threads: int = 0
    threadgroups: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    barriers: int = 0
    simd_ops: int = 0

    def add(self, other: "LaunchStats") -> None:
        for name in ("dispatches", "threads", "threadgroups", "bytes_read", "bytes_written",
                     "barriers", "simd_ops"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Counter:
    def __init__(self) -> None:
        self.launches: List[LaunchStats] = []

    def by_kernel(self) -> Dict[str, LaunchStats]:
        out: Dict[str, LaunchStats] = {}
        for s in self.launches:
            out.setdefault(s.kernel, LaunchStats(kernel=s.kernel)).add(s)
        return out

    def total(self) -> LaunchStats:
        t = LaunchStats(kernel="total")
        for s in self.launches:
            t.add(s)
        return t


_counters: List[_Counter] = []
_counter_lock = threading.Lock()


@contextlib.contextmanager
def counting():
    """Collect the :class:`LaunchStats` of every emulated launch inside the block."""
    c = _Counter()
    with _counter_lock:
        _counters.append(c)
    try:
        yield c
    finally:
        with _counter_lock:
            _counters.remove(c)


_TG_ARRAY_RE = re.compile(r"\bthreadgroup\s+([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s+([A-Za-z_]\w*)\s*\[([^\]]+)\]\s*;")


def _rewrite(src: str) -> str:
    counter = iter(range(1 << 30))

    def tg_array(m: "re.Match[str]") -> str:
        return (f"auto {m.group(2)} = ::mtl::tg_alloc<{m.group(1)}, ({m.group(3)})>"
                f"({next(counter)}, \"{m.group(2)}\");")

    out = _TG_ARRAY_RE.sub(tg_array, src)

    def ptr(m: "re.Match[str]") -> str:
        const = m.group(1) or m.group(3) or m.group(5) or m.group(2) == "constant"
        return f"::mtl::mptr<{'const ' if const else ''}{m.group(4)}> "

    out = msl.PTR_RE.sub(ptr, out)
    out = re.sub(r"\[\[[^\]]*\]\]", "", out)
    out = re.sub(r"\breinterpret_cast\s*<", "::mtl::ptr_cast<", out)
    return out


def _launcher(index: int, k: Kernel, fibers: bool) -> str:
    lines = [f'extern "C" int mtl_launch_{index}(void** args, const int64_t* nbytes, const uint32_t* grid, '
             f"const uint32_t* group, mtl::Stats* stats, char* err, int errlen) {{"]
    nbuf = sum(1 for p in k.params if p.kind in ("buffer", "scalar"))
    lines.append(f"  mtl::Region regions[{max(nbuf, 1)}];")
    call_args = []
    for p in k.params:
        if p.kind == "buffer":
            i = p.index
            lines.append(f'  regions[{i}].name = "{p.name}"; regions[{i}].arg = {i}; '
                         f"regions[{i}].base = (char*)args[{i}]; regions[{i}].nbytes = nbytes[{i}];")
            if p.space == "constant":   # uniform data: read once a launch through the constant cache
                lines.append(f"  regions[{i}].uniform = true; stats->bytes_read += nbytes[{i}];")
            ct = ("const " if p.const else "") + p.cxx_type
            call_args.append(f"::mtl::mptr<{ct}>(({ct}*)args[{i}], &regions[{i}])")
        elif p.kind == "scalar":
            call_args.append(f"*(const {p.cxx_type}*)args[{p.index}]")
        else:
            call_args.append(f"::mtl::pos_as<{p.cxx_type}>::get(at.{p.attr})")
    lines.append("  auto run = [&](mtl::Group& g, int tid) {")
    lines.append("    mtl::ThreadAttrs at = mtl::thread_attrs(g, tid); (void)at;")
    lines.append(f"    {k.call_expr}({', '.join(call_args)});")
    lines.append("  };")
    lines.append(f"  return mtl::dispatch(grid, group, {'true' if fibers else 'false'}, stats, run, err, errlen);")
    lines.append("}")
    return "\n".join(lines)


def _cache_dir() -> Path:
    root = os.environ.get("NATTEN_MPS_EMULATOR_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "natten_mps" / "emulator"


def _shim_text() -> str:
    return "\0".join((_SHIM_DIR / f).read_text() for f in ("metal_common.h", "metal_stdlib"))


def _build(cxx_source: str, label: str) -> Path:
    return msl.cached_build(cxx_source, os.environ.get("CXX", "g++"), _CXX_FLAGS, _SHIM_DIR, _cache_dir(), ".so",
                            "kernel.cpp", _shim_text(), f"emulator could not compile {label}")


class EmulatedKernel:
    """One host-visible kernel; call it like a ``torch.mps.compile_shader`` kernel."""

    def __init__(self, library: "EmulatedLibrary", spec: Kernel, fn, threadgroup_bytes: Optional[int] = None) -> None:
        self._lib = library
        self._spec = spec
        self._fn = fn
        self.last_stats: Optional[LaunchStats] = None
        self.static_thread_group_memory_length = threadgroup_bytes

    @property
    def name(self) -> str:
        return self._spec.host_name

    # Same read-only properties as compile_shader's kernel objects (torch/csrc/mps/Module.cpp):
    # the pipeline's thread limit is 1024 unless a lower one is simulated
    # (NATTEN_MPS_EMULATE_MAX_THREADS / msl.set_emulated_max_threads).
    @property
    def max_threads_per_threadgroup(self) -> int:
        return msl.emulated_max_threads()

    thread_execution_width = 32

    def __call__(self, *args, threads=None, group_size=None) -> None:
        bound = msl.bind_arguments(self._spec, args, "cpu")
        ptrs, sizes, keep = bound.ptrs, bound.sizes, bound.keep
        limit = self.max_threads_per_threadgroup
        grid, group = msl.launch_dims(self.name, args, threads, group_size, limit)
        msl.check_dispatch(self.name, self._lib.label, group, limit)
        stats = _CStats()
        if 0 in grid:
            self.last_stats = LaunchStats(kernel=self.name, dispatches=1)
            return
        n = len(ptrs)
        c_ptrs = (ctypes.c_void_p * max(n, 1))(*ptrs)
        c_sizes = (ctypes.c_int64 * max(n, 1))(*sizes)
        c_grid = (ctypes.c_uint32 * 3)(*grid)
        c_group = (ctypes.c_uint32 * 3)(*group)
        err = ctypes.create_string_buffer(4096)
        rc = self._fn(c_ptrs, c_sizes, c_grid, c_group, ctypes.byref(stats), err, 4096)
        del keep
        ls = LaunchStats(kernel=self.name, dispatches=1, **{f: getattr(stats, f) for f, _ in _CStats._fields_})
        self.last_stats = ls
        with _counter_lock:
            for c in _counters:
                c.launches.append(ls)
        if rc != 0:
            cls = _ERROR_KINDS.get(rc, MetalEmulatorError)
            raise cls(f"kernel {self.name} ({self._lib.label}): {err.value.decode(errors='replace')}")


class EmulatedLibrary(msl.KernelLibrary):
    """Compiled library: ``lib.<kernel_name>`` is an :class:`EmulatedKernel`."""

    def __init__(self, source: str, label: str = "<source>") -> None:
        self.label = label
        clean = msl.preprocess(source, label)
        self._specs = msl.find_kernels(clean)
        fibers = msl.uses_synchronisation(clean)
        cxx = _rewrite(clean) + "\n\n" + "\n\n".join(
            _launcher(i, k, fibers) for i, k in enumerate(self._specs)) + "\n"
        cxx = "#include <metal_stdlib>\n" + cxx
        self._so = ctypes.CDLL(str(_build(cxx, label)))
        self._kernels: Dict[str, EmulatedKernel] = {}
        for i, k in enumerate(self._specs):
            fn = getattr(self._so, f"mtl_launch_{i}")
            fn.restype = ctypes.c_int
            self._kernels[k.host_name] = EmulatedKernel(self, k, fn, msl.threadgroup_bytes(clean, k))


_library_cache: Dict[str, EmulatedLibrary] = {}


def compile(source: str, label: str = "<source>") -> EmulatedLibrary:  # noqa: A001 - mirrors compile_shader
    """Compile MSL ``source`` for the CPU emulator (cached per source text in this process)."""
    key = hashlib.sha256(source.encode()).hexdigest()
    lib = _library_cache.get(key)
    if lib is None:
        lib = EmulatedLibrary(source, label)
        _library_cache[key] = lib
    return lib
