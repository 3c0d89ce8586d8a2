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


class ShaderCompileError(RuntimeError):
    """The source is outside the supported subset, or the back end's compiler rejected it."""


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


def launch_dims(name: str, args: Sequence[object], threads, group_size) -> Tuple[List[int], List[int]]:
    """``(grid, group)`` as 3 ints each, with ``compile_shader``'s defaults and checks."""
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
        group_size = min(grid[0], MAX_THREADS_PER_THREADGROUP) or 1
    group = _as_dims(group_size, "group_size")
    if group[0] * group[1] * group[2] > MAX_THREADS_PER_THREADGROUP:
        raise ValueError(f"kernel {name}: group_size {tuple(group)} exceeds "
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
            return kernels[name]
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
