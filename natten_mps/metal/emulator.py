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

Per launch the emulator counts threads, threadgroups, device bytes read/written, barriers and SIMD
collectives (:class:`LaunchStats`); :func:`counting` collects them for benchmarks.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "MetalEmulatorError",
    "OutOfBoundsError",
    "BarrierDivergenceError",
    "ThreadgroupRaceError",
    "ShaderCompileError",
    "LaunchStats",
    "compile",
    "counting",
]

_SHIM_DIR = Path(__file__).with_name("emulator_shim")
_CXX_FLAGS = ["-std=c++17", "-O2", "-shared", "-fPIC", "-w", "-fno-strict-aliasing"]
MAX_THREADS_PER_THREADGROUP = 1024


class MetalEmulatorError(RuntimeError):
    """A kernel did something that is undefined or silently wrong on a GPU."""


class OutOfBoundsError(MetalEmulatorError):
    pass


class BarrierDivergenceError(MetalEmulatorError):
    pass


class ThreadgroupRaceError(MetalEmulatorError):
    pass


class ShaderCompileError(RuntimeError):
    """The source is outside the supported subset, or g++ rejected the rewritten source."""


_ERROR_KINDS = {1: MetalEmulatorError, 2: OutOfBoundsError, 3: BarrierDivergenceError, 4: ThreadgroupRaceError}


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


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------
_POSITION_ATTRS = {
    "thread_position_in_grid", "thread_position_in_threadgroup", "threadgroup_position_in_grid",
    "threads_per_threadgroup", "threadgroups_per_grid", "threads_per_grid",
    "dispatch_threads_per_threadgroup", "thread_index_in_threadgroup", "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup", "threads_per_simdgroup", "thread_execution_width",
    "simdgroups_per_threadgroup",
}

# MSL element type -> torch dtypes a bound tensor may have.
_ELEMENT_DTYPES = {
    "float": (torch.float32,), "half": (torch.float16,), "bfloat": (torch.bfloat16,),
    "int": (torch.int32,), "uint": (torch.int32,), "long": (torch.int64,), "ulong": (torch.int64,),
    "int64_t": (torch.int64,), "uint64_t": (torch.int64,), "int32_t": (torch.int32,),
    "uint32_t": (torch.int32,), "short": (torch.int16,), "ushort": (torch.int16,),
    "char": (torch.int8,), "uchar": (torch.uint8, torch.bool), "bool": (torch.bool,),
    "int8_t": (torch.int8,), "uint8_t": (torch.uint8, torch.bool),
}
for _base in ("float", "half", "bfloat", "int", "uint"):
    for _n in (2, 3, 4):
        _ELEMENT_DTYPES[f"{_base}{_n}"] = _ELEMENT_DTYPES[_base]
_INT64_SCALARS = {"long", "ulong", "int64_t", "uint64_t", "size_t"}
_FLOAT_SCALARS = {"float"}


@dataclass
class _Param:
    name: str
    kind: str              # "buffer" | "scalar" | "position"
    cxx_type: str          # element type for buffers, value type for scalars/positions
    const: bool = False
    index: int = -1        # buffer index
    attr: str = ""


@dataclass
class _Kernel:
    host_name: str
    call_expr: str
    params: List[_Param] = field(default_factory=list)


def _strip_comments(src: str) -> str:
    """Remove comments, keeping every newline so line numbers survive."""
    def repl(m: "re.Match[str]") -> str:
        s = m.group(0)
        if s.startswith("/"):
            return "\n" * s.count("\n") if s.startswith("/*") else ""
        return s
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"', repl, src, flags=re.S)


def _split_params(text: str) -> List[str]:
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _matching_paren(src: str, open_pos: int) -> int:
    depth = 0
    for i in range(open_pos, len(src)):
        if src[i] == "(":
            depth += 1
        elif src[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ShaderCompileError("unbalanced parentheses in kernel signature")


_PTR_RE = re.compile(
    r"(?:\b(const)\s+)?\b(device|constant|threadgroup)\s+(?:(const)\s+)?"
    r"([A-Za-z_][\w:]*(?:<[^<>;{}()]*>)?)\s*(?:(const)\s+)?\*")


def _parse_param(kernel: str, text: str, position: int) -> _Param:
    attrs = re.findall(r"\[\[\s*([^\]]*?)\s*\]\]", text)
    decl = re.sub(r"\[\[[^\]]*\]\]", "", text).strip()
    m = re.match(r"(.*?)([A-Za-z_]\w*)\s*$", decl, flags=re.S)
    if not m:
        raise ShaderCompileError(f"kernel {kernel}: cannot parse parameter {text!r}")
    type_text, name = m.group(1).strip(), m.group(2)
    attr = attrs[0] if attrs else ""
    bm = re.match(r"buffer\s*\(\s*(\d+)\s*\)", attr)
    if bm:
        idx = int(bm.group(1))
        pm = _PTR_RE.search(type_text + " ")
        if "*" in type_text:
            if not pm or pm.group(2) == "threadgroup":
                raise ShaderCompileError(
                    f"kernel {kernel}: buffer parameter {name!r} must point into device or constant memory")
            const = bool(pm.group(1) or pm.group(3) or pm.group(5) or pm.group(2) == "constant")
            return _Param(name, "buffer", pm.group(4), const, idx, attr)
        sm = re.match(r"(?:const\s+)?(?:constant|device)\s+(?:const\s+)?([\w:]+)\s*&$", type_text)
        if not sm:
            raise ShaderCompileError(
                f"kernel {kernel}: scalar parameter {name!r} must be declared 'constant T& {name}'")
        return _Param(name, "scalar", sm.group(1), True, idx, attr)
    if attr in _POSITION_ATTRS:
        return _Param(name, "position", type_text.replace("const", "").strip(), attr=attr)
    raise ShaderCompileError(
        f"kernel {kernel}: parameter {name!r} has no supported attribute ({attr or 'none'}); "
        "use [[buffer(i)]] or a thread-position attribute")


def _find_kernels(src: str) -> List[_Kernel]:
    kernels: List[_Kernel] = []
    # Explicit instantiations of templated kernels.
    inst = re.compile(r'template\s*\[\[\s*host_name\s*\(\s*((?:"[^"]*"\s*)+)\)\s*\]\]\s*'
                      r'(?:\[\[\s*kernel\s*\]\]\s*|kernel\s+)void\s+([A-Za-z_]\w*)\s*(<[^;{]*?>)\s*\(')
    for m in inst.finditer(src):
        close = _matching_paren(src, m.end() - 1)
        params = _split_params(src[m.end():close])
        host = "".join(re.findall(r'"([^"]*)"', m.group(1)))  # adjacent literals concatenate
        k = _Kernel(host, m.group(2) + m.group(3))
        k.params = [_parse_param(host, p, i) for i, p in enumerate(params)]
        kernels.append(k)
    # Plain kernels (skipping templated definitions and instantiations).
    plain = re.compile(r"(?:\[\[\s*kernel\s*\]\]|\bkernel)\s+void\s+([A-Za-z_]\w*)\s*\(")
    for m in plain.finditer(src):
        head = src[max(0, m.start() - 400):m.start()]
        tail = head.rstrip()
        if tail.endswith(">") or re.search(r"template\s*\[\[[^\]]*\]\]\s*$", tail):
            continue  # templated definition or instantiation
        close = _matching_paren(src, m.end() - 1)
        params = _split_params(src[m.end():close])
        k = _Kernel(m.group(1), m.group(1))
        k.params = [_parse_param(m.group(1), p, i) for i, p in enumerate(params)]
        kernels.append(k)
    for k in kernels:
        buffers = [p for p in k.params if p.kind in ("buffer", "scalar")]
        if [p.index for p in buffers] != list(range(len(buffers))):
            raise ShaderCompileError(
                f"kernel {k.host_name}: [[buffer(i)]] indices must be 0, 1, 2, ... in parameter order "
                f"(compile_shader binds arguments by position), got {[p.index for p in buffers]}")
    return kernels


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

    out = _PTR_RE.sub(ptr, out)
    out = re.sub(r"\[\[[^\]]*\]\]", "", out)
    out = re.sub(r"\breinterpret_cast\s*<", "::mtl::ptr_cast<", out)
    return out


def _launcher(index: int, k: _Kernel, fibers: bool) -> str:
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


_SYNC_RE = re.compile(r"\b(threadgroup_barrier|simdgroup_barrier|simd_\w+|quad_\w+)\s*\(")


METAL_VERSION = 320  # the MSL version the emulator stands in for (__METAL_VERSION__)


def _preprocess(source: str, label: str) -> str:
    """Run the C preprocessor over the shader (macros, #if) so kernels generated by macros are seen.

    ``<metal_stdlib>`` is left out here and included by the compiled unit; line markers are kept so
    errors and barrier sites report the shader's own line numbers.
    """
    body = re.sub(r"^[ \t]*#[ \t]*include[ \t]*<metal_stdlib>.*$", "", source, flags=re.M)
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise ShaderCompileError(f"the Metal emulator needs a C++17 compiler ({compiler!r} not found)")
    proc = subprocess.run([compiler, "-E", "-x", "c++", "-std=c++17", f"-D__METAL_VERSION__={METAL_VERSION}",
                           "-"], input=body, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ShaderCompileError(f"preprocessing {label} failed:\n{proc.stderr[-4000:]}")
    return _strip_comments(proc.stdout)


def _cache_dir() -> Path:
    root = os.environ.get("NATTEN_MPS_EMULATOR_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "natten_mps" / "emulator"


def _build(cxx_source: str, label: str) -> Path:
    shim = (_SHIM_DIR / "metal_stdlib").read_text()
    compiler = os.environ.get("CXX", "g++")
    key = hashlib.sha256("\0".join([shim, cxx_source, compiler, " ".join(_CXX_FLAGS)]).encode()).hexdigest()[:24]
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    so = cache / f"{key}.so"
    if so.exists():
        return so
    if shutil.which(compiler) is None:
        raise ShaderCompileError(f"the Metal emulator needs a C++17 compiler ({compiler!r} not found)")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cpp = Path(tmp) / "kernel.cpp"
        cpp.write_text(cxx_source)
        out = Path(tmp) / "kernel.so"
        proc = subprocess.run([compiler, *_CXX_FLAGS, "-I", str(_SHIM_DIR), str(cpp), "-o", str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ShaderCompileError(f"emulator could not compile {label}:\n{proc.stderr[-6000:]}")
        os.replace(out, so)  # atomic: concurrent builders agree on the result
    return so


class EmulatedKernel:
    """One host-visible kernel; call it like a ``torch.mps.compile_shader`` kernel."""

    def __init__(self, library: "EmulatedLibrary", spec: _Kernel, fn) -> None:
        self._lib = library
        self._spec = spec
        self._fn = fn
        self.last_stats: Optional[LaunchStats] = None

    @property
    def name(self) -> str:
        return self._spec.host_name

    # Same read-only properties as compile_shader's kernel objects.
    max_threads_per_threadgroup = MAX_THREADS_PER_THREADGROUP
    thread_execution_width = 32

    def _bind(self, args: Sequence[object]) -> Tuple[list, list, list]:
        spec = self._spec
        bound = [p for p in spec.params if p.kind in ("buffer", "scalar")]
        if len(args) != len(bound):
            raise TypeError(f"kernel {spec.host_name} takes {len(bound)} arguments "
                            f"({', '.join(p.name for p in bound)}), got {len(args)}")
        ptrs, sizes, keep = [], [], []
        for p, a in zip(bound, args):
            if isinstance(a, torch.Tensor):
                if p.kind != "buffer":
                    raise TypeError(f"kernel {spec.host_name}: argument {p.index} ({p.name}) is a "
                                    f"'{p.cxx_type}' scalar but a tensor was passed")
                if a.device.type != "cpu":
                    raise TypeError(f"kernel {spec.host_name}: the emulator runs on CPU tensors, "
                                    f"argument {p.name} is on {a.device}")
                if not a.is_contiguous():
                    raise ValueError(f"kernel {spec.host_name}: argument {p.name} must be contiguous "
                                     "(buffers bind raw storage from the tensor's offset)")
                allowed = _ELEMENT_DTYPES.get(p.cxx_type)
                if allowed is not None and a.dtype not in allowed:
                    raise TypeError(f"kernel {spec.host_name}: argument {p.name} is declared "
                                    f"'{p.cxx_type}*' but the tensor is {a.dtype}")
                ptrs.append(a.data_ptr())
                sizes.append(a.numel() * a.element_size())
                keep.append(a)
            elif isinstance(a, (bool, int)) or isinstance(a, float):
                if p.kind != "scalar":
                    raise TypeError(f"kernel {spec.host_name}: argument {p.index} ({p.name}) is a "
                                    "buffer but a Python scalar was passed")
                if isinstance(a, float):
                    if p.cxx_type not in _FLOAT_SCALARS:
                        raise TypeError(f"kernel {spec.host_name}: Python floats bind as 32-bit float, "
                                        f"but {p.name} is declared 'constant {p.cxx_type}&'")
                    c = ctypes.c_float(a)
                else:
                    if p.cxx_type not in _INT64_SCALARS:
                        raise TypeError(f"kernel {spec.host_name}: Python ints bind as 64-bit integers, "
                                        f"but {p.name} is declared 'constant {p.cxx_type}&' "
                                        "(declare it long/int64_t)")
                    c = ctypes.c_int64(int(a))
                ptrs.append(ctypes.addressof(c))
                sizes.append(ctypes.sizeof(c))
                keep.append(c)
            else:
                raise TypeError(f"kernel {spec.host_name}: unsupported argument type {type(a).__name__} "
                                f"for {p.name} (the emulator binds tensors, ints and floats; pass lists "
                                "as tensors)")
        return ptrs, sizes, keep

    def __call__(self, *args, threads=None, group_size=None) -> None:
        ptrs, sizes, keep = self._bind(args)
        if threads is None:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if not tensors:
                raise ValueError(f"kernel {self.name}: threads= is required when no tensor is passed")
            threads = tensors[0].numel()
        grid = _as_dims(threads, "threads")
        if group_size is not None and _ndims(group_size) != _ndims(threads):
            # compile_shader checks threads and group_size have the same dimensionality
            raise ValueError(f"kernel {self.name}: threads={threads!r} and group_size={group_size!r} must have "
                             "the same number of dimensions")
        if group_size is None:
            group_size = min(grid[0], MAX_THREADS_PER_THREADGROUP)
        group = _as_dims(group_size, "group_size")
        if group[0] * group[1] * group[2] > MAX_THREADS_PER_THREADGROUP:
            raise ValueError(f"kernel {self.name}: group_size {tuple(group)} exceeds "
                             f"{MAX_THREADS_PER_THREADGROUP} threads per threadgroup")
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


def _ndims(v) -> int:
    return 1 if isinstance(v, int) else len(v)


def _as_dims(v, what: str) -> List[int]:
    if isinstance(v, int):
        dims = [v]
    elif isinstance(v, (tuple, list, torch.Size)) and 1 <= len(v) <= 3:
        dims = [int(x) for x in v]
    else:
        raise ValueError(f"{what} must be an int or a sequence of 1 to 3 ints, got {v!r}")
    if any(d < 0 for d in dims) or (what == "group_size" and any(d < 1 for d in dims)):
        raise ValueError(f"{what} must be positive, got {v!r}")
    return dims + [1] * (3 - len(dims))


class EmulatedLibrary:
    """Compiled library: ``lib.<kernel_name>`` is an :class:`EmulatedKernel`."""

    def __init__(self, source: str, label: str = "<source>") -> None:
        self.label = label
        clean = _preprocess(source, label)
        self._specs = _find_kernels(clean)
        fibers = bool(_SYNC_RE.search(clean))
        cxx = _rewrite(clean) + "\n\n" + "\n\n".join(
            _launcher(i, k, fibers) for i, k in enumerate(self._specs)) + "\n"
        cxx = "#include <metal_stdlib>\n" + cxx
        self._so = ctypes.CDLL(str(_build(cxx, label)))
        self._kernels: Dict[str, EmulatedKernel] = {}
        for i, k in enumerate(self._specs):
            fn = getattr(self._so, f"mtl_launch_{i}")
            fn.restype = ctypes.c_int
            self._kernels[k.host_name] = EmulatedKernel(self, k, fn)

    def kernel_names(self) -> List[str]:
        return list(self._kernels)

    def __getattr__(self, name: str) -> EmulatedKernel:
        kernels = self.__dict__.get("_kernels", {})
        if name in kernels:
            return kernels[name]
        raise AttributeError(f"{self.__dict__.get('label', 'library')} has no kernel {name!r}; "
                             f"kernels: {sorted(kernels)}")


_library_cache: Dict[str, EmulatedLibrary] = {}


def compile(source: str, label: str = "<source>") -> EmulatedLibrary:  # noqa: A001 - mirrors compile_shader
    """Compile MSL ``source`` for the CPU emulator (cached per source text in this process)."""
    key = hashlib.sha256(source.encode()).hexdigest()
    lib = _library_cache.get(key)
    if lib is None:
        lib = EmulatedLibrary(source, label)
        _library_cache[key] = lib
    return lib
