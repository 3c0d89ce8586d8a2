"""Front end for the Metal Shading Language subset this project uses, shared by both back ends.

``natten_mps.metal.emulator`` (C++ on CPU fibers) and ``natten_mps.metal.cuda`` (CUDA C++ on an NVIDIA
GPU) read a ``.metal`` source through this module alone, so both see the same kernels:

* :func:`preprocess` runs the C preprocessor (macros, ``#if``) and strips comments, keeping lines;
* :func:`find_kernels` lists the host-visible kernels (plain ``kernel`` functions and explicit
  instantiations of templated kernels named with ``[[host_name("...")]]``) with their parameters;
* :func:`bind_arguments` applies ``torch.mps.compile_shader``'s binding rules to a call's arguments
  (tensors by position as buffers, Python ints as 64-bit, floats as 32-bit) and returns, per argument,
  what to pass; :func:`launch_dims` normalises ``threads=``/``group_size=``.

Each back end then rewrites address spaces, threadgroup arrays and attributes for its own compiler.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

MAX_THREADS_PER_THREADGROUP = 1024
MAX_THREADGROUP_MEMORY = 32768   # bytes: maxThreadgroupMemoryLength of Apple GPUs (Apple7 and later, M1-M4)


class ShaderCompileError(RuntimeError):
    """The source is outside the supported subset, or the back end's compiler rejected it."""


class LaunchRefusedError(RuntimeError, ValueError):
    """The Metal runtime would refuse this pipeline or dispatch: threadgroup memory over
    ``maxThreadgroupMemoryLength`` (pipeline creation) or a threadgroup of more threads than the
    pipeline's ``max_threads_per_threadgroup`` (dispatch). The message names the kernel."""


# ------------------------------------------------------------------------------------------------
# Pipeline limits (both back ends)
# ------------------------------------------------------------------------------------------------
def _emulated_limit_from_env() -> int:
    raw = os.environ.get("NATTEN_MPS_EMULATE_MAX_THREADS", "")
    if raw in ("", "0"):
        return MAX_THREADS_PER_THREADGROUP
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"NATTEN_MPS_EMULATE_MAX_THREADS must be an integer, got {raw!r}") from None
    if not 32 <= value <= MAX_THREADS_PER_THREADGROUP or value % 32:
        raise ValueError("NATTEN_MPS_EMULATE_MAX_THREADS must be a multiple of 32 in [32, 1024], "
                         f"got {value}")
    return value


_pipeline_thread_limit = _emulated_limit_from_env()


def set_emulated_max_threads(limit: Optional[int]) -> None:
    """Make every emulated (and CUDA-translated) pipeline report ``max_threads_per_threadgroup`` =
    ``limit`` (a multiple of 32, at most 1024; None: 1024), as register-heavy pipelines on an Apple
    GPU may. Also set by ``NATTEN_MPS_EMULATE_MAX_THREADS``."""
    global _pipeline_thread_limit
    if limit is None:
        _pipeline_thread_limit = MAX_THREADS_PER_THREADGROUP
        return
    limit = int(limit)
    if not 32 <= limit <= MAX_THREADS_PER_THREADGROUP or limit % 32:
        raise ValueError(f"limit must be a multiple of 32 in [32, 1024], got {limit}")
    _pipeline_thread_limit = limit


def emulated_max_threads() -> int:
    """The ``max_threads_per_threadgroup`` emulated pipelines report now."""
    return _pipeline_thread_limit


def check_pipeline(kernel_name: str, label: str, threadgroup_bytes: Optional[int]) -> None:
    """Pipeline creation: refuse a kernel whose static threadgroup memory exceeds 32 KB."""
    if threadgroup_bytes is not None and threadgroup_bytes > MAX_THREADGROUP_MEMORY:
        raise LaunchRefusedError(
            f"kernel {kernel_name} ({label}): {threadgroup_bytes} bytes of threadgroup memory exceed "
            f"maxThreadgroupMemoryLength ({MAX_THREADGROUP_MEMORY} bytes); the pipeline cannot be created")


def check_dispatch(kernel_name: str, label: str, group: Sequence[int], pipeline_limit: int) -> None:
    """Dispatch: refuse a threadgroup of more threads than the pipeline allows."""
    n = group[0] * group[1] * group[2]
    if n > pipeline_limit:
        raise LaunchRefusedError(
            f"kernel {kernel_name} ({label}): a threadgroup of {n} threads {tuple(group)} exceeds the "
            f"pipeline's max_threads_per_threadgroup ({pipeline_limit})")


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
class Param:
    name: str
    kind: str              # "buffer" | "scalar" | "position"
    cxx_type: str          # element type for buffers, value type for scalars/positions
    const: bool = False
    index: int = -1        # buffer index
    attr: str = ""
    space: str = ""        # address space of a buffer: "device" or "constant"


@dataclass
class Kernel:
    host_name: str
    call_expr: str
    params: List[Param] = field(default_factory=list)


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


PTR_RE = re.compile(
    r"(?:\b(const)\s+)?\b(device|constant|threadgroup)\s+(?:(const)\s+)?"
    r"([A-Za-z_][\w:]*(?:<[^<>;{}()]*>)?)\s*(?:(const)\s+)?\*")


def _parse_param(kernel: str, text: str, position: int) -> Param:
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
        pm = PTR_RE.search(type_text + " ")
        if "*" in type_text:
            if not pm or pm.group(2) == "threadgroup":
                raise ShaderCompileError(
                    f"kernel {kernel}: buffer parameter {name!r} must point into device or constant memory")
            const = bool(pm.group(1) or pm.group(3) or pm.group(5) or pm.group(2) == "constant")
            return Param(name, "buffer", pm.group(4), const, idx, attr, pm.group(2))
        sm = re.match(r"(?:const\s+)?(?:constant|device)\s+(?:const\s+)?([\w:]+)\s*&$", type_text)
        if not sm:
            raise ShaderCompileError(
                f"kernel {kernel}: scalar parameter {name!r} must be declared 'constant T& {name}'")
        return Param(name, "scalar", sm.group(1), True, idx, attr)
    if attr in _POSITION_ATTRS:
        return Param(name, "position", type_text.replace("const", "").strip(), attr=attr)
    raise ShaderCompileError(
        f"kernel {kernel}: parameter {name!r} has no supported attribute ({attr or 'none'}); "
        "use [[buffer(i)]] or a thread-position attribute")


def find_kernels(src: str) -> List[Kernel]:
    kernels: List[Kernel] = []
    # Explicit instantiations of templated kernels.
    inst = re.compile(r'template\s*\[\[\s*host_name\s*\(\s*((?:"[^"]*"\s*)+)\)\s*\]\]\s*'
                      r'(?:\[\[\s*kernel\s*\]\]\s*|kernel\s+)void\s+([A-Za-z_]\w*)\s*(<[^;{]*?>)\s*\(')
    for m in inst.finditer(src):
        close = _matching_paren(src, m.end() - 1)
        params = _split_params(src[m.end():close])
        host = "".join(re.findall(r'"([^"]*)"', m.group(1)))  # adjacent literals concatenate
        k = Kernel(host, m.group(2) + m.group(3))
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
        k = Kernel(m.group(1), m.group(1))
        k.params = [_parse_param(m.group(1), p, i) for i, p in enumerate(params)]
        kernels.append(k)
    for k in kernels:
        buffers = [p for p in k.params if p.kind in ("buffer", "scalar")]
        if [p.index for p in buffers] != list(range(len(buffers))):
            raise ShaderCompileError(
                f"kernel {k.host_name}: [[buffer(i)]] indices must be 0, 1, 2, ... in parameter order "
                f"(compile_shader binds arguments by position), got {[p.index for p in buffers]}")
    return kernels


# ------------------------------------------------------------------------------------------------
# Static threadgroup memory of a kernel
# ------------------------------------------------------------------------------------------------
_SCALAR_BYTES = {"float": 4, "int": 4, "uint": 4, "int32_t": 4, "uint32_t": 4, "half": 2, "bfloat": 2,
                 "short": 2, "ushort": 2, "int16_t": 2, "uint16_t": 2, "char": 1, "uchar": 1, "bool": 1,
                 "int8_t": 1, "uint8_t": 1, "long": 8, "ulong": 8, "int64_t": 8, "uint64_t": 8}
_UNKNOWN_SCALAR_BYTES = 4       # a type the evaluator cannot resolve: MSL's widest arithmetic scalar in use
_TG_DECL_RE = re.compile(r"\bthreadgroup\s+([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s+([A-Za-z_]\w*)\s*\[([^\]]+)\]\s*;")


def _type_bytes(t: str, typedefs: dict) -> int:
    t = re.sub(r"\b(const|volatile|typename)\b", "", t).strip()
    if t in typedefs:
        return _type_bytes(typedefs[t], {k: v for k, v in typedefs.items() if k != t})
    if t in _SCALAR_BYTES:
        return _SCALAR_BYTES[t]
    m = re.fullmatch(r"(?:metal::)?vec\s*<\s*([^,<>]+)\s*,\s*(\d+)\s*>", t)
    if m:
        n = int(m.group(2))
        return _type_bytes(m.group(1), typedefs) * (4 if n == 3 else n)
    m = re.fullmatch(r"([a-z]+?)([234])", t)
    if m and m.group(1) in _SCALAR_BYTES:
        n = int(m.group(2))
        return _SCALAR_BYTES[m.group(1)] * (4 if n == 3 else n)
    return _UNKNOWN_SCALAR_BYTES


def _eval_int(expr: str, consts: dict, typedefs: dict) -> Optional[int]:
    expr = re.sub(r"sizeof\s*\(([^()]*(?:<[^<>]*>)?[^()]*)\)", lambda m: str(_type_bytes(m.group(1), typedefs)), expr)
    for _ in range(4):
        expr = re.sub(r"\b[A-Za-z_]\w*\b", lambda m: str(consts.get(m.group(0), m.group(0))), expr)
    expr = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expr)
    if not re.fullmatch(r"[\d\s+\-*/%()<>=!&|?:]*", expr):
        return None
    try:
        value = eval(expr.replace("/", "//"), {"__builtins__": {}}, {})     # digits and operators only
    except Exception:  # noqa: BLE001 - not a constant expression we can evaluate
        return None
    return int(value)


def _definition(src: str, name: str):
    """(template parameter names, body) of the kernel function ``name`` defined in ``src``."""
    for m in re.finditer(r"\bvoid\s+" + re.escape(name) + r"\s*\(", src):
        close = _matching_paren(src, m.end() - 1)
        after = src[close + 1:close + 200].lstrip()
        if not after.startswith("{"):
            continue
        start = src.index("{", close)
        depth = 0
        for i in range(start, len(src)):
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            if depth == 0:
                break
        head = src[max(0, m.start() - 600):m.start()]
        tm = re.search(r"template\s*<([^<>]*(?:<[^<>]*>[^<>]*)*)>\s*(?:\[\[\s*kernel\s*\]\]\s*|kernel\s+)?$", head)
        params = []
        if tm:
            params = [p.split()[-1].split("=")[0].strip() for p in _split_params(tm.group(1))]
        return params, src[start:i + 1]
    return None


def threadgroup_bytes(clean_src: str, kernel: Kernel) -> Optional[int]:
    """Static threadgroup memory of ``kernel`` (bytes): the ``threadgroup T name[N];`` arrays its
    definition declares, with the instantiation's template arguments and the source's
    ``constant constexpr`` integers substituted (a type the evaluator cannot resolve counts as a
    4-byte scalar). None when an extent is not a constant expression it can evaluate."""
    m = re.match(r"([A-Za-z_]\w*)\s*(?:<(.*)>)?\s*$", kernel.call_expr, flags=re.S)
    if not m:
        return None
    found = _definition(clean_src, m.group(1))
    if found is None:
        return None
    params, body = found
    args = _split_params(m.group(2)) if m.group(2) else []
    consts = {n: f"({v})" for n, v in
              re.findall(r"\bconstexpr\s+(?:int|uint|long|short|ushort)\s+(\w+)\s*=\s*([^;{}]+);", clean_src)}
    consts.update(dict(zip(params, args)))
    typedefs = {p: a for p, a in zip(params, args) if not re.fullmatch(r"[\d\s()+\-*/<>=!&|]*", a)}
    for target, alias in re.findall(r"\btypedef\s+([^;]+?)\s+(\w+)\s*;", body):
        typedefs.setdefault(alias, target)
    for target_alias in re.findall(r"\busing\s+(\w+)\s*=\s*([^;]+);", body):
        typedefs.setdefault(target_alias[0], target_alias[1])
    total = 0
    for t, _, extent in _TG_DECL_RE.findall(body):
        for p, a in zip(params, args):
            t = re.sub(r"\b" + re.escape(p) + r"\b", a, t)
        n = _eval_int(extent, consts, typedefs)
        if n is None:
            return None
        total += _type_bytes(t, typedefs) * n
    return total


_SYNC_RE = re.compile(r"\b(threadgroup_barrier|simdgroup_barrier|simdgroup_multiply\w*|simd_\w+|quad_\w+)\s*\(")


METAL_VERSION = 320  # the MSL version the emulator stands in for (__METAL_VERSION__)


def preprocess(source: str, label: str) -> str:
    """Run the C preprocessor over the shader (macros, #if) so kernels generated by macros are seen.

    ``<metal_stdlib>`` is left out here and included by the compiled unit; line markers are kept so
    errors and barrier sites report the shader's own line numbers.
    """
    body = re.sub(r"^[ \t]*#[ \t]*include[ \t]*<metal_stdlib>.*$", "", source, flags=re.M)
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise ShaderCompileError(f"the MSL front end needs a C++17 preprocessor ({compiler!r} not found)")
    proc = subprocess.run([compiler, "-E", "-x", "c++", "-std=c++17", f"-D__METAL_VERSION__={METAL_VERSION}",
                           "-"], input=body, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ShaderCompileError(f"preprocessing {label} failed:\n{proc.stderr[-4000:]}")
    return _strip_comments(proc.stdout)


def uses_synchronisation(clean_source: str) -> bool:
    """Whether a preprocessed source calls barriers or SIMD-group functions."""
    return bool(_SYNC_RE.search(clean_source))


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


_INTEGER_SCALARS = _INT64_SCALARS | {"int", "uint", "int32_t", "uint32_t", "short", "ushort", "int16_t",
                                     "uint16_t", "char", "uchar", "int8_t", "uint8_t", "bool"}


@dataclass
class BoundArguments:
    """What a launch passes, per bound parameter: a buffer's address and size, or a scalar's bytes."""

    ptrs: List[int]
    sizes: List[int]
    keep: list          # objects that must outlive the launch (tensors, ctypes scalars)


def bind_arguments(kernel: Kernel, args: Sequence[object], device_type: str, strict_scalars: bool = True
                   ) -> BoundArguments:
    """Check ``args`` against ``kernel``'s parameters with ``compile_shader``'s binding rules.

    Tensors bind as buffers from their storage offset (they must be contiguous, on ``device_type``,
    with the declared element dtype); a Python ``int`` binds as a 64-bit integer and a ``float`` as a
    32-bit float. ``strict_scalars`` (this project's rule) demands ``constant long&`` for ints; without
    it any integer scalar type accepts an int and reads the low bytes of the 64-bit value, which is
    what MPS does (used to run third-party shaders faithfully). Scalars are passed by address of an
    8-byte ctypes value.
    """
    import ctypes

    name = kernel.host_name
    bound = [p for p in kernel.params if p.kind in ("buffer", "scalar")]
    if len(args) != len(bound):
        raise TypeError(f"kernel {name} takes {len(bound)} arguments "
                        f"({', '.join(p.name for p in bound)}), got {len(args)}")
    ptrs, sizes, keep = [], [], []
    for p, a in zip(bound, args):
        if isinstance(a, torch.Tensor):
            if p.kind != "buffer":
                raise TypeError(f"kernel {name}: argument {p.index} ({p.name}) is a "
                                f"'{p.cxx_type}' scalar but a tensor was passed")
            if a.device.type != device_type:
                raise TypeError(f"kernel {name}: this library runs on {device_type} tensors, "
                                f"argument {p.name} is on {a.device}")
            if not a.is_contiguous():
                raise ValueError(f"kernel {name}: argument {p.name} must be contiguous "
                                 "(buffers bind raw storage from the tensor's offset)")
            allowed = _ELEMENT_DTYPES.get(p.cxx_type)
            if allowed is not None and a.dtype not in allowed:
                raise TypeError(f"kernel {name}: argument {p.name} is declared "
                                f"'{p.cxx_type}*' but the tensor is {a.dtype}")
            ptrs.append(a.data_ptr())
            sizes.append(a.numel() * a.element_size())
            keep.append(a)
        elif isinstance(a, (bool, int, float)):
            if p.kind != "scalar":
                raise TypeError(f"kernel {name}: argument {p.index} ({p.name}) is a "
                                "buffer but a Python scalar was passed")
            if isinstance(a, float):
                if p.cxx_type not in _FLOAT_SCALARS:
                    raise TypeError(f"kernel {name}: Python floats bind as 32-bit float, "
                                    f"but {p.name} is declared 'constant {p.cxx_type}&'")
                c = ctypes.c_int64(0)
                ctypes.memmove(ctypes.addressof(c), ctypes.addressof(ctypes.c_float(a)), 4)
            else:
                allowed_ints = _INT64_SCALARS if strict_scalars else _INTEGER_SCALARS
                if p.cxx_type not in allowed_ints:
                    raise TypeError(f"kernel {name}: Python ints bind as 64-bit integers, "
                                    f"but {p.name} is declared 'constant {p.cxx_type}&' "
                                    "(declare it long/int64_t)")
                c = ctypes.c_int64(int(a))
            ptrs.append(ctypes.addressof(c))
            sizes.append(8)
            keep.append(c)
        else:
            raise TypeError(f"kernel {name}: unsupported argument type {type(a).__name__} "
                            f"for {p.name} (kernels bind tensors, ints and floats; pass lists "
                            "as tensors)")
    return BoundArguments(ptrs, sizes, keep)


def launch_dims(name: str, args: Sequence[object], threads, group_size,
                pipeline_limit: int = MAX_THREADS_PER_THREADGROUP) -> Tuple[List[int], List[int]]:
    """``(grid, group)`` as 3 ints each, with ``compile_shader``'s defaults (a default group is as
    many threads as the pipeline allows, ``pipeline_limit``) and checks."""
    if threads is None:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors:
            raise ValueError(f"kernel {name}: threads= is required when no tensor is passed")
        threads = tensors[0].numel()
    grid = _as_dims(threads, "threads")
    if group_size is not None and _ndims(group_size) != _ndims(threads):
        # compile_shader checks threads and group_size have the same dimensionality
        raise ValueError(f"kernel {name}: threads={threads!r} and group_size={group_size!r} must have "
                         "the same number of dimensions")
    if group_size is None:
        group_size = min(grid[0], pipeline_limit) or 1
    group = _as_dims(group_size, "group_size")
    if group[0] * group[1] * group[2] > MAX_THREADS_PER_THREADGROUP:
        raise LaunchRefusedError(f"kernel {name}: group_size {tuple(group)} exceeds "
                                 f"{MAX_THREADS_PER_THREADGROUP} threads per threadgroup")
    return grid, group


def compiler_for(kind: str = "cxx") -> str:
    return os.environ.get("CXX", "g++") if kind == "cxx" else os.environ.get("NVCC", "nvcc")


def which(program: str) -> Optional[str]:
    return shutil.which(program)


class KernelLibrary:
    """Base of a back end's compiled library: ``lib.<kernel_name>`` is one of its kernels
    (``self._kernels``, by host name), as with ``compile_shader``'s libraries."""

    _kernels: dict

    def kernel_names(self) -> List[str]:
        return list(self._kernels)

    def __getattr__(self, name: str):
        kernels = self.__dict__.get("_kernels", {})
        if name in kernels:
            kernel = kernels[name]
            # pipeline creation: Metal refuses a kernel over the threadgroup memory limit here
            check_pipeline(name, self.__dict__.get("label", "library"),
                           getattr(kernel, "static_thread_group_memory_length", None))
            return kernel
        raise AttributeError(f"{self.__dict__.get('label', 'library')} has no kernel {name!r}; "
                             f"kernels: {sorted(kernels)}")


def cached_build(source: str, compiler: str, flags: List[str], include_dir: str, cache_dir, suffix: str,
                 source_name: str, fingerprint: str, failure: str) -> "os.PathLike":
    """Compile ``source`` with ``compiler flags -I include_dir`` into ``cache_dir/<hash><suffix>``,
    keyed by the source, the compiler, its flags and ``fingerprint`` (the shim headers' text); an
    existing file is reused. ``failure`` starts the error message (the compiler's output follows).
    The result is moved into place atomically, so concurrent builders agree on it."""
    import hashlib
    import tempfile
    from pathlib import Path
    key = hashlib.sha256("\0".join([fingerprint, source, compiler, " ".join(flags)]).encode()).hexdigest()[:24]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{key}{suffix}"
    if target.exists():
        return target
    if shutil.which(compiler) is None:
        raise ShaderCompileError(f"{failure}: the compiler {compiler!r} is not installed")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = Path(tmp) / source_name
        src.write_text(source)
        out = Path(tmp) / target.name
        proc = subprocess.run([compiler, *flags, "-I", str(include_dir), str(src), "-o", str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise ShaderCompileError(f"{failure}:\n{(proc.stderr + proc.stdout)[-6000:]}")
        os.replace(out, target)
    return target
