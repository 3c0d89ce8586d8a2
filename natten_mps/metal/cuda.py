"""MSL -> CUDA back end: the project's ``.metal`` sources run on an NVIDIA GPU.

``compile(source)`` mirrors ``torch.mps.compile_shader(source)`` (and ``emulator.compile``): it returns
a library whose attributes are the kernels of the source, called as
``lib.name(*args, threads=..., group_size=...)`` on CUDA tensors with ``compile_shader``'s binding
rules (tensors by position as device buffers, a Python int as 64-bit, a float as 32-bit; see
``natten_mps.metal.msl.bind_arguments``). It reads the source through the same front end as the
emulator (:mod:`natten_mps.metal.msl`) and shares its value semantics (``metal_common.h``).

How a source becomes CUDA (:func:`translate`):

1. the front end preprocesses it and lists its host-visible kernels;
2. explicit template instantiations are dropped (the launchers instantiate what they call),
   ``threadgroup T name[N];`` becomes ``__shared__``, namespace-scope ``constant`` data becomes
   ``__device__ const``, every function defined at namespace or class scope gets ``__device__``,
   and ``[[...]]`` attributes go; the result is wrapped in ``namespace metal { ... }`` so that its
   names (``float4``, ``exp``, ...) are the MSL ones;
3. each kernel gets a ``__global__`` wrapper that rebuilds the thread-position attributes from a
   launch description, and an ``extern "C"`` host launcher. The launcher splits the Metal grid
   into boxes of equal threadgroups (full ones, and the partial ones at each edge), so every CUDA
   block is exactly one Metal threadgroup: ``threads_per_threadgroup`` is the partial size and
   barriers are reached by every thread, as on Metal;
4. ``nvcc`` builds a shared object (cached by hash, ``NATTEN_MPS_CUDA_CACHE``), loaded with ctypes;
   the target is the current GPU's architecture, or ``NATTEN_MPS_CUDA_ARCH`` (e.g. ``sm_90``),
   which also lets a machine without a GPU build (and so check) every translation.

Metal's limits are enforced as on Metal, not CUDA's (:class:`msl.LaunchRefusedError`, checked in
Python before the launcher runs): 32 KB of static threadgroup memory (the front end's count) at
pipeline creation, 1024 threads or the simulated pipeline limit at dispatch.

Scalars are passed in the 8 bytes ``compile_shader`` would have bound and read as the declared
type, exactly as MPS reads them, which also runs third-party shaders that declare ``constant int&``
for Python ints (``compile(..., strict_scalars=False)``). Timings of these kernels rank designs on
an NVIDIA GPU; they are not Apple timings.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import msl
from .msl import Kernel, LaunchRefusedError, ShaderCompileError

__all__ = ["compile", "translate", "build", "CudaLaunchError", "LaunchRefusedError", "ShaderCompileError",
           "nvcc_available"]

_SHIM_DIR = Path(__file__).with_name("emulator_shim")
_NVCC_FLAGS = ["-std=c++17", "-O3", "-lineinfo", "--expt-relaxed-constexpr", "-w", "-Xcompiler", "-fPIC,-fsigned-char",
               "-cudart", "shared"]  # the process shares the CUDA runtime torch has loaded


class CudaLaunchError(RuntimeError):
    """A launch was refused by CUDA (bad configuration, or an error of an earlier kernel)."""


def nvcc_available() -> bool:
    return msl.which(msl.compiler_for("nvcc")) is not None


# ------------------------------------------------------------------------------------------------
# Source rewrite
# ------------------------------------------------------------------------------------------------
_INSTANTIATION_RE = re.compile(r"template\s*\[\[\s*host_name\s*\(")
_TG_ARRAY_RE = re.compile(r"\bthreadgroup\s+([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s+([A-Za-z_]\w*)\s*\[([^\]]+)\]\s*;")
_CONTROL_RE = re.compile(r"\b(if|for|while|switch|catch|do|else|return)\s*$")


def _drop_instantiations(src: str) -> str:
    out, pos = [], 0
    for m in _INSTANTIATION_RE.finditer(src):
        if m.start() < pos:
            continue
        # the statement ends at the ';' after the parameter list's closing parenthesis
        paren = src.index("(", src.index("void", m.end()))
        close = msl._matching_paren(src, paren)
        end = src.index(";", close) + 1
        out.append(src[pos:m.start()])
        out.append("\n" * src.count("\n", m.start(), end))  # keep line numbers
        pos = end
    out.append(src[pos:])
    return "".join(out)


def _template_header_end(head: str) -> int:
    """Index just past a leading ``template <...>`` in ``head`` (0 when there is none)."""
    m = re.match(r"\s*template\s*<", head)
    if not m:
        return 0
    depth, i = 1, m.end()
    while i < len(head) and depth:
        depth += {"<": 1, ">": -1}.get(head[i], 0)
        i += 1
    return i


def _annotate_device(src: str) -> str:
    """Add ``__device__`` to every function defined at namespace or class scope.

    A brace opens a function body when the text since the previous statement boundary ends with a
    parameter list (``)``, optionally ``const``/``noexcept``, or a constructor's initializer list) and
    is no control statement. Namespace-scope ``constant`` declarations become ``__device__ const``.
    """
    out: List[str] = []
    scopes: List[str] = []           # "ns" | "class" | "func" | "init"
    stmt_start = 0                   # index in src where the current statement began
    i, n = 0, len(src)
    last_copied = 0
    while i < n:
        ch = src[i]
        if ch == '"' or ch == "'":   # skip literals
            j = i + 1
            while j < n and src[j] != ch:
                j += 2 if src[j] == "\\" else 1
            i = j + 1
            continue
        if ch == "#" and (i == 0 or src[i - 1] == "\n"):   # line markers / pragmas
            j = src.find("\n", i)
            i = n if j < 0 else j
            stmt_start = i + 1
            continue
        in_code = bool(scopes) and scopes[-1] in ("func", "init")
        if ch == "{":
            if in_code:
                scopes.append(scopes[-1])
            else:
                head = src[stmt_start:i]
                plain = re.sub(r"\s+", " ", head).strip()
                if re.search(r"\b(struct|class|union|enum)\b", plain) and not plain.endswith(")"):
                    scopes.append("class")
                elif re.match(r"(inline\s+)?namespace\b", plain) or plain.startswith('extern "C"'):
                    scopes.append("ns")
                elif re.search(r"\)\s*(const|noexcept|override)?\s*$", plain) or re.search(
                        r"\)\s*:\s*.*\)\s*$", plain):
                    if not _CONTROL_RE.search(plain.split("(")[0]):
                        cut = stmt_start + _template_header_end(head)
                        out.append(src[last_copied:cut])
                        out.append(" __device__ ")
                        last_copied = cut
                    scopes.append("func")
                else:
                    scopes.append("init")
            stmt_start = i + 1
        elif ch == "}":
            if scopes:
                scopes.pop()
            if not scopes or scopes[-1] in ("ns", "class"):
                stmt_start = i + 1
        elif ch == ";" and not in_code:
            stmt_start = i + 1
        elif ch == ":" and not in_code and src.startswith("public:", max(0, i - 6)):
            stmt_start = i + 1
        i += 1
    out.append(src[last_copied:])
    text = "".join(out)
    # namespace-scope constant data: `constant T x = ...;` (not constexpr) -> `__device__ const`
    return re.sub(r"(^|[;}]\s*)constant\s+(?!constexpr)", r"\1__device__ const ", text, flags=re.M)


def _rewrite(clean: str) -> str:
    src = _drop_instantiations(clean)
    # clang's full-unroll loop pragma (Metal) is spelled `#pragma unroll` by nvcc
    src = re.sub(r"^([ \t]*)#pragma clang loop unroll\(full\)", r"\1#pragma unroll", src, flags=re.M)
    src = _TG_ARRAY_RE.sub(lambda m: f"__shared__ {m.group(1)} {m.group(2)}[{m.group(3)}];", src)
    src = re.sub(r"\[\[[^\]]*\]\]", "", src)
    src = _annotate_device(src)
    # address spaces are plain C++ on CUDA (macros would break CUDA's own __device__ macro)
    src = re.sub(r"\b(device|thread|threadgroup|kernel)\b", "", src)
    return re.sub(r"\bconstant\b", "const", src)


def _wrapper(index: int, k: Kernel) -> str:
    """``__global__`` wrapper and ``extern "C"`` host launcher of one kernel."""
    params, call_args, raw_args, locals_ = [], [], [], []
    for p in k.params:
        if p.kind == "buffer":
            ct = ("const " if p.const else "") + p.cxx_type
            params.append(f"{ct}* b{p.index}")
            call_args.append(f"b{p.index}")
            raw_args.append(f"({ct}*)args[{p.index}]")
        elif p.kind == "scalar":
            params.append(f"unsigned long long s{p.index}")
            locals_.append(f"  {p.cxx_type} v{p.index}; memcpy(&v{p.index}, &s{p.index}, sizeof({p.cxx_type}));")
            call_args.append(f"v{p.index}")
            raw_args.append(f"*(const unsigned long long*)args[{p.index}]")
        else:
            call_args.append(f"::mtl::pos_as<{p.cxx_type}>::get(at.{p.attr})")
    params.append("::mtl::Launch L")
    raw_args.append("L")
    body = "\n".join(locals_)
    return f"""
namespace metal {{
__global__ void mtl_kernel_{index}({', '.join(params)}) {{
  ::mtl::ThreadAttrs at = ::mtl::thread_attrs(L); (void)at;
{body}
  {k.call_expr}({', '.join(call_args)});
}}
// extern "C" inside the namespace: an unmangled name, and the shader's type names in scope
extern "C" int mtl_launch_{index}(void** args, const uint32_t* grid, const uint32_t* group, int device_index,
                                  void* stream, void* ev_start, void* ev_end, char* err, int errlen) {{
  cudaError_t e = cudaSetDevice(device_index);
  if (e != cudaSuccess) {{ snprintf(err, errlen, "cudaSetDevice: %s", cudaGetErrorString(e)); return 1; }}
  // optional timing: events recorded right around the launches (no host binding time between)
  if (ev_start) cudaEventRecord((cudaEvent_t)ev_start, (cudaStream_t)stream);
  ::mtl::Launch L;
  uint32_t full[3], rest[3];
  for (int d = 0; d < 3; ++d) {{
    L.grid[d] = grid[d]; L.group[d] = group[d];
    L.groups[d] = (grid[d] + group[d] - 1) / group[d];
    full[d] = grid[d] / group[d]; rest[d] = grid[d] % group[d];
  }}
  if (L.groups[1] > 65535u || L.groups[2] > 65535u) {{
    snprintf(err, errlen, "grid of %u x %u x %u threadgroups: CUDA allows at most 65535 in y and z",
             L.groups[0], L.groups[1], L.groups[2]);
    return 1;
  }}
  // boxes of equal threadgroups: per axis the full groups, then the partial edge group
  for (int pz = 0; pz < 2; ++pz) for (int py = 0; py < 2; ++py) for (int px = 0; px < 2; ++px) {{
    int part[3] = {{px, py, pz}};
    dim3 blocks, threads;
    unsigned* b[3] = {{&blocks.x, &blocks.y, &blocks.z}};
    unsigned* t[3] = {{&threads.x, &threads.y, &threads.z}};
    bool empty = false;
    for (int d = 0; d < 3; ++d) {{
      *b[d] = part[d] ? (rest[d] ? 1u : 0u) : full[d];
      *t[d] = part[d] ? rest[d] : group[d];
      L.offset[d] = part[d] ? full[d] : 0u;
      empty = empty || *b[d] == 0u || *t[d] == 0u;
    }}
    if (empty) continue;
    mtl_kernel_{index}<<<blocks, threads, 0, (cudaStream_t)stream>>>({', '.join(raw_args)});
    e = cudaGetLastError();
    if (e != cudaSuccess) {{
      snprintf(err, errlen, "launch of %u x %u x %u blocks of %u x %u x %u threads: %s",
               blocks.x, blocks.y, blocks.z, threads.x, threads.y, threads.z, cudaGetErrorString(e));
      return 1;
    }}
  }}
  if (ev_end) cudaEventRecord((cudaEvent_t)ev_end, (cudaStream_t)stream);
  return 0;
}}
}}  // namespace metal
"""


def translate(source: str, label: str = "<source>"):
    """``(cuda_source, kernels)``: the CUDA C++ translation of MSL ``source`` and its kernel specs."""
    clean = msl.preprocess(source, label)
    specs = msl.find_kernels(clean)
    cuda = ['#include "metal_stdlib_cuda.cuh"', "#include <cstdio>", "namespace metal {",
            _rewrite(clean), "}  // namespace metal"]
    cuda += [_wrapper(i, k) for i, k in enumerate(specs)]
    return "\n".join(cuda) + "\n", specs


# ------------------------------------------------------------------------------------------------
# Build
# ------------------------------------------------------------------------------------------------
def _cache_dir() -> Path:
    root = os.environ.get("NATTEN_MPS_CUDA_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "natten_mps" / "cuda"


def target_arch(device: Optional[int] = None) -> str:
    arch = os.environ.get("NATTEN_MPS_CUDA_ARCH")
    if arch:
        return arch
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm_{major}{minor}"
    return "sm_90"


def _shim_text() -> str:
    return "\0".join((_SHIM_DIR / f).read_text() for f in ("metal_common.h", "metal_stdlib_cuda.cuh"))


# A translation check compiles the device code unoptimised to PTX only (no ptxas): the front end's
# errors are what it looks for, and the optimising build of attention.metal takes 5 minutes on 2 cores.
_CHECK_FLAGS = ["-Xcicc", "-O0"]


def build(cuda_source: str, label: str, arch: Optional[str] = None, shared: bool = True) -> Path:
    """Compile a translation with nvcc: a shared object (``shared``) or just an object file (a check:
    unoptimised device code, and PTX only when ``arch`` is a ``compute_`` one)."""
    nvcc = msl.compiler_for("nvcc")
    arch = arch or target_arch()
    flags = _NVCC_FLAGS + [f"-arch={arch}"] + (["-shared"] if shared else ["-c"] + _CHECK_FLAGS)
    return msl.cached_build(cuda_source, nvcc, flags, _SHIM_DIR, _cache_dir(), ".so" if shared else ".o", "kernel.cu",
                            _shim_text(), f"nvcc could not compile the CUDA translation of {label}")


# ------------------------------------------------------------------------------------------------
# Library
# ------------------------------------------------------------------------------------------------
_timed_launches: list = []      # (kernel name, start, end) of the launches that used them


class KernelTiming:
    """Times every launch inside the block with CUDA events recorded by the launcher itself, right
    around the kernels (the Python binding before a launch is not counted).

    ``with KernelTiming() as t: ...`` then ``t.launches`` is a list of (kernel name, milliseconds).
    """

    def __enter__(self):
        _timed_launches.clear()
        global _timing_source
        _timing_source = self
        return self

    def next_events(self):
        pair = []
        for _ in range(2):
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()             # creates the underlying event; re-recorded by the launcher
            pair.append(ev)
        return tuple(pair)

    def __exit__(self, *exc):
        global _timing_source
        _timing_source = None
        torch.cuda.synchronize()
        self.launches = [(name, s.elapsed_time(e)) for name, s, e in _timed_launches]
        _timed_launches.clear()
        return False


_timing_source: Optional[KernelTiming] = None


class CudaKernel:
    """One host-visible kernel; call it like a ``torch.mps.compile_shader`` kernel, on CUDA tensors."""

    thread_execution_width = 32

    def __init__(self, library: "CudaLibrary", spec: Kernel, fn, threadgroup_bytes: Optional[int] = None) -> None:
        self._lib = library
        self._spec = spec
        self._fn = fn
        # Metal's limits, enforced as Metal would (CUDA itself allows 48 KB of static shared memory):
        # 32 KB of threadgroup memory at pipeline creation (msl.KernelLibrary), the pipeline's
        # thread limit at dispatch (1024 unless a lower one is simulated, msl.set_emulated_max_threads)
        self.static_thread_group_memory_length = threadgroup_bytes

    @property
    def max_threads_per_threadgroup(self) -> int:
        return msl.emulated_max_threads()

    @property
    def name(self) -> str:
        return self._spec.host_name

    def __call__(self, *args, threads=None, group_size=None) -> None:
        limit = self.max_threads_per_threadgroup
        grid, group = msl.launch_dims(self.name, args, threads, group_size, limit)
        msl.check_dispatch(self.name, self._lib.label, group, limit)     # before anything touches the GPU
        bound = msl.bind_arguments(self._spec, args, "cuda", strict_scalars=self._lib.strict_scalars)
        if 0 in grid:
            return
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cuda", torch.cuda.current_device())
        index = device.index if device.index is not None else torch.cuda.current_device()
        for t in tensors:
            if t.device != device:
                raise ValueError(f"kernel {self.name}: all tensors must be on one device, got {device} "
                                 f"and {t.device}")
        n = max(len(bound.ptrs), 1)
        c_args = (ctypes.c_void_p * n)(*bound.ptrs)
        c_grid = (ctypes.c_uint32 * 3)(*grid)
        c_group = (ctypes.c_uint32 * 3)(*group)
        stream = torch.cuda.current_stream(device).cuda_stream
        err = ctypes.create_string_buffer(1024)
        events = _timing_source.next_events() if _timing_source is not None else (None, None)
        rc = self._fn(c_args, c_grid, c_group, index, ctypes.c_void_p(stream),
                      *(ctypes.c_void_p(ev.cuda_event if ev is not None else None) for ev in events), err, 1024)
        if events[0] is not None:
            _timed_launches.append((self.name, events[0], events[1]))
        del bound
        if rc != 0:
            raise CudaLaunchError(f"kernel {self.name} ({self._lib.label}): {err.value.decode(errors='replace')}")


class CudaLibrary(msl.KernelLibrary):
    """Compiled library: ``lib.<kernel_name>`` is a :class:`CudaKernel`."""

    def __init__(self, source: str, label: str = "<source>", strict_scalars: bool = True) -> None:
        self.label = label
        self.strict_scalars = strict_scalars
        self.cuda_source, self._specs = translate(source, label)
        clean = msl.preprocess(source, label)
        tg_bytes = {k.host_name: msl.threadgroup_bytes(clean, k) for k in self._specs}
        self._so = ctypes.CDLL(str(build(self.cuda_source, label)))
        self._kernels: Dict[str, CudaKernel] = {}
        for i, k in enumerate(self._specs):
            fn = getattr(self._so, f"mtl_launch_{i}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
            self._kernels[k.host_name] = CudaKernel(self, k, fn, tg_bytes[k.host_name])


_library_cache: Dict[tuple, CudaLibrary] = {}
_lock = threading.Lock()


def compile(source: str, label: str = "<source>", strict_scalars: bool = True) -> CudaLibrary:  # noqa: A001
    """Compile MSL ``source`` for the current CUDA GPU (cached per source text in this process)."""
    key = (hashlib.sha256(source.encode()).hexdigest(), strict_scalars)
    with _lock:
        lib = _library_cache.get(key)
        if lib is None:
            lib = CudaLibrary(source, label, strict_scalars)
            _library_cache[key] = lib
    return lib


def check_translation(source: str, label: str = "<source>", arch: Optional[str] = None) -> Path:
    """Translate ``source`` and compile it with ``nvcc -c`` (no GPU needed): a translation check, to
    PTX for ``compute_90`` unless ``arch`` (or ``NATTEN_MPS_CUDA_ARCH``) names another target."""
    cuda_source, _ = translate(source, label)
    arch = arch or os.environ.get("NATTEN_MPS_CUDA_ARCH", "sm_90").replace("sm_", "compute_")
    return build(cuda_source, label, arch=arch, shared=False)

