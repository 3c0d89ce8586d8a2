"""Compiler-grade check of the Metal shaders: every shader parsed by clang's C++ front end under Metal's rules.

``python -m natten_mps.metal.clang_check [files]`` (default: every ``shaders/**/*.metal``) prints one
``file:line: message`` per problem and exits 1 if there is any. Needs the ``libclang`` wheel (the
``test`` extra): clang's front end, nothing system-wide.

How. Each shader, with its local ``#include "..."`` files inlined as :func:`natten_mps.metal.runtime.shader_source`
inlines them for ``compile_shader``, is parsed twice, after a line-preserving rewrite (below), with the
declaration-only stand-in for ``<metal_stdlib>`` in ``msl_prelude/metal_stdlib.h``:

1. as C++ for OpenCL 2021 (``-x clcpp -cl-std=clc++2021``), where MSL's address spaces become OpenCL's:
   ``device`` -> ``__global``, ``threadgroup`` -> ``__local``, ``constant`` -> ``__constant``, ``thread`` ->
   ``__private``. Clang keeps them disjoint, so it reports, in every explicit template instantiation:

   * an implicit conversion between pointers or references of different address spaces;
   * a write through ``constant`` (read-only);
   * MSL's vector rules: no implicit conversion between vector types (``half4 h = float4(...)``), vector
     constructors with the wrong number of components (``float4(a, b)``), an explicit conversion between
     vectors of different lengths;
   * and everything else a C++17 front end rejects (types, overloads, templates).

   On the AST (libclang) the check adds Metal's rules that OpenCL spells differently:

   * a pointer or reference written without an address space (in a parameter, variable, field or return
     type; OpenCL makes it ``__generic``, Metal has no generic address space);
   * a program-scope variable outside ``constant``;
   * a ``threadgroup`` variable declared outside a kernel function;
   * kernel signatures: ``void`` return; ``[[buffer(n)]]`` on a pointer or reference into ``device`` or
     ``constant`` memory; ``[[threadgroup(n)]]`` on one into ``threadgroup`` memory; thread-position
     attributes (``[[thread_position_in_grid]]``, ...) on ``uint``/``ushort`` (or, for the positions and
     sizes, their 2- and 3-vectors); every other parameter a ``device``/``constant`` pointer or reference.

2. as C++14 (``-x c++ -std=c++14``, address spaces spelled as nothing): the Metal Shading Language is
   based on C++14 (while the emulator and nvcc compile C++17), so every construct clang calls a "C++17
   extension" there is reported (``if constexpr``, structured bindings, fold expressions, inline
   variables, nested namespace definitions, ``[[nodiscard]]``/``[[maybe_unused]]``, ``static_assert``
   without a message, ``auto`` template parameters, ...), and class template argument deduction.

The rewrite keeps every line where it was: comments are blanked, ``[[kernel]]`` becomes ``kernel`` (an
annotation, since OpenCL's ``__kernel`` cannot be a template), MSL's vector constructors ``float4(...)`` /
``vec<T, 4>(...)`` become calls of a declared template that enforces MSL's constructor rules, a
``threadgroup`` variable ``threadgroup T x[N];`` becomes a reference to threadgroup storage (OpenCL
allows ``__local`` variables only in ``__kernel`` functions; Metal's rule is checked on the AST), a
function constant becomes an initialised ``constant``.

What it cannot see (the regex rules of :mod:`natten_mps.metal.static_check` keep those): recursion,
``double``, the C++ standard library, dynamic allocation; and Metal's resource limits (threadgroup memory,
threads per threadgroup), which the back ends enforce at launch.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

Problem = Tuple[str, int, str]

PRELUDE = Path(__file__).resolve().parent / "msl_prelude" / "metal_stdlib.h"
METAL_VERSION = 310   # MSL 3.1: the bfloat instantiations are parsed too

_OPENCL_ARGS = ["-x", "clcpp", "-cl-std=clc++2021", "-cl-no-stdinc", "-fsyntax-only", "-ferror-limit=0",
                "-Wno-unknown-attributes", "-Wno-pragma-once-outside-header"]
_CPP14_ARGS = ["-x", "c++", "-std=c++14", "-nostdinc", "-nostdinc++", "-fsyntax-only", "-ferror-limit=0",
               "-Wno-unknown-attributes", "-Wno-pragma-once-outside-header", "-Wc++17-extensions"]

_SPACES = {"__global": "device", "__constant": "constant", "__local": "threadgroup",
           "__private": "thread", "__generic": "(no address space)"}
_VECTOR_NAMES = r"(?:packed_)?(?:float|half|bfloat|int|uint|short|ushort|char|uchar|long|ulong|bool)[234]"
# Thread-position attributes: (name, whether 2- and 3-vectors are allowed).
_POSITION_ATTRS = {
    "thread_position_in_grid": True, "thread_position_in_threadgroup": True,
    "threadgroup_position_in_grid": True, "threads_per_threadgroup": True, "threadgroups_per_grid": True,
    "threads_per_grid": True, "dispatch_threads_per_threadgroup": True, "dispatch_threadgroups_per_grid": True,
    "thread_index_in_threadgroup": False, "thread_index_in_simdgroup": False,
    "simdgroup_index_in_threadgroup": False, "threads_per_simdgroup": False, "simdgroups_per_threadgroup": False,
    "thread_execution_width": False, "thread_index_in_quadgroup": False, "quadgroup_index_in_threadgroup": False,
    "quadgroups_per_threadgroup": False, "dispatch_simdgroups_per_threadgroup": False,
    "dispatch_quadgroups_per_threadgroup": False,
}
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"\s*$', re.M)


class ClangUnavailable(RuntimeError):
    """libclang (the ``libclang`` wheel, ``pip install natten-mps-kernels[test]``) is not installed."""


def _cindex():
    try:
        import clang.cindex as ci
    except ImportError as e:  # pragma: no cover - the test extra installs it
        raise ClangUnavailable("the compiler-grade MSL check needs libclang: pip install 'libclang>=16'") from e
    return ci


# ------------------------------------------------------------------------------------------------
# Source: local includes inlined (as runtime.shader_source does), with the origin of every line
# ------------------------------------------------------------------------------------------------
def inline_includes(path, root=None) -> Tuple[str, List[Tuple[str, int]]]:
    """Text of ``path`` with local ``#include "..."`` files inlined once each, exactly as
    :func:`~natten_mps.metal.runtime.shader_source` builds the source ``compile_shader`` sees, and the
    (file, line) each line of that text starts in. ``root``: file names are shown relative to its
    parent (default: the file's own directory)."""
    path = Path(path).resolve()
    root = Path(root).resolve() if root else path.parent
    seen = set()

    def show(p: Path) -> str:
        try:
            return str(p.relative_to(root.parent))
        except ValueError:
            return str(p)

    def expand(p: Path) -> list:
        if p in seen:
            return []
        seen.add(p)
        src = p.read_text()
        pieces, pos = [], 0
        for m in _INCLUDE_RE.finditer(src):
            target = (p.parent / m.group(1)).resolve()
            if not target.is_file():
                continue            # left in place (check_source's stand_ins may supply it)
            pieces.append((src[pos:m.start()], show(p), src.count("\n", 0, pos) + 1))
            pieces += expand(target)
            pos = m.end()
        pieces.append((src[pos:], show(p), src.count("\n", 0, pos) + 1))
        return pieces

    pieces = expand(path)
    text = "".join(piece for piece, _, _ in pieces)
    # A line's origin is that of its first character (an empty line: where it was started).
    origins: List[Tuple[str, int]] = []
    pending, need = (show(path), 1), True
    for piece, name, line in pieces:
        for i, part in enumerate(piece.split("\n")):
            if i > 0:
                if need:
                    origins.append(pending)
                pending, need = (name, line + i), True
            if need and part:
                origins.append((name, line + i))
                need = False
    if need:
        origins.append(pending)
    return text, origins


# ------------------------------------------------------------------------------------------------
# Line-preserving rewrite of MSL into the prelude's dialect
# ------------------------------------------------------------------------------------------------
def _blank_comments(src: str) -> str:
    def repl(m):
        s = m.group(0)
        if s.startswith("//") or s.startswith("/*"):
            return re.sub(r"[^\n]", " ", s)
        return s
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', repl, src, flags=re.S)


def _matching_angle(src: str, i: int) -> int:
    """Index of the '>' closing the '<' at ``i`` (or -1)."""
    depth = 0
    for j in range(i, len(src)):
        c = src[j]
        if c in "<([":
            depth += 1
        elif c in ">)]":
            depth -= 1
            if depth == 0:
                return j if c == ">" else -1
        elif c in ";{}":
            return -1
    return -1


def rewrite(src: str) -> str:
    """MSL source -> the dialect of ``msl_prelude/metal_stdlib.h`` (every line stays where it was)."""
    s = _blank_comments(src)
    s = re.sub(r"^[ \t]*#[ \t]*include[ \t]*<metal_\w+>[^\n]*", "", s, flags=re.M)
    s = re.sub(r"\[\[\s*kernel\s*\]\]", "kernel", s)
    # Explicit instantiations carry [[host_name("...")]] where C++ allows no attribute.
    s = re.sub(r"\btemplate(\s*)(\[\[(?:[^\]]|\](?!\]))*\]\])",
               lambda m: "template" + m.group(1) + " " * len(m.group(2)), s)
    # Function constants: a `constant` with a value (any value: the rules do not depend on it).
    s = re.sub(r"\[\[\s*function_constant\s*\([^)\]]*\)\s*\]\]\s*;", " = {};", s)
    # Vector constructors: float4(...), metal::half2(...), vec<T, 4>(...).
    out, pos = [], 0
    ctor = re.compile(r"(?<![\w.])(?:metal::)?(%s|vec\s*<)" % _VECTOR_NAMES)
    for m in ctor.finditer(s):
        if m.start() < pos:
            continue
        before = s[max(0, m.start() - 12):m.start()]
        if re.search(r"\boperator\s*$", before):
            continue
        end = m.end()
        if m.group(1).startswith("vec"):
            close = _matching_angle(s, end - 1)
            if close < 0:
                continue
            end = close + 1
        after = re.match(r"[ \t]*\(", s[end:])
        if not after:
            continue
        out.append(s[pos:m.start()])
        out.append("metal::msl_make_vector<%s>(" % s[m.start():end])
        pos = end + after.end()
    out.append(s[pos:])
    s = "".join(out)
    # Threadgroup variables: a reference to threadgroup storage (Metal's scope rule: on the AST).
    tg = re.compile(r"\bthreadgroup\s+(?P<type>(?:const\s+)?[A-Za-z_][\w:]*(?:\s*<[^;{}]*?>)?)\s+"
                    r"(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\];]*\]\s*)*);")
    s = tg.sub(lambda m: "threadgroup %s (&%s)%s = *metal::msl_threadgroup_storage<%s%s>();" % (
        m.group("type"), m.group("name"), m.group("dims").strip(), m.group("type"), m.group("dims").strip()), s)
    return s


# ------------------------------------------------------------------------------------------------
# Parsing and diagnostics
# ------------------------------------------------------------------------------------------------
_MAIN = "msl_check_input.metal"


def _parse(text: str, args: Sequence[str]):
    ci = _cindex()
    index = ci.Index.create()
    return index.parse(_MAIN, args=list(args) + ["-D__METAL_VERSION__=%d" % METAL_VERSION, "-include", str(PRELUDE)],
                       unsaved_files=[(_MAIN, text)])


def _msl_words(msg: str) -> str:
    msg = re.sub(r"([*&)])\s*__private\b", r"\1", msg)   # the pointer variable's own (thread) space
    msg = re.sub(r"(?:^|(?<=['(]))__private\s+(?=[^*&']*(?:'|$))", "", msg) if "binding reference" not in msg else msg
    for k, v in _SPACES.items():
        msg = msg.replace(k, v)
    msg = re.sub(r"metal::msl_make_vector<([^>]*(?:<[^>]*>)?)>", r"\1", msg)
    msg = msg.replace("no matching function for call to 'msl_make_vector'",
                      "no MSL vector constructor takes these arguments (one scalar, or scalars and vectors "
                      "whose lengths add up to the vector's; no implicit truncation)")
    msg = msg.replace("msl_make_vector", "vector constructor").replace("msl_half_t", "half")
    msg = msg.replace("msl_threadgroup_storage", "threadgroup variable")
    return msg


def _vector_len(desc: str) -> Optional[int]:
    m = re.search(r"vector of (\d+) ", desc)
    return int(m.group(1)) if m else None


def _ignored_opencl_diagnostic(msg: str) -> bool:
    """OpenCL rules that Metal does not have."""
    # MSL converts a scalar operand to the vector's element type ("usual arithmetic conversion").
    if "scalar operand type has greater rank than the type of the vector element" in msg:
        return True
    # An explicit cast between vectors of one length is MSL's explicit conversion (T4(x) with T4 a
    # template parameter or typedef; the spelled-out constructors go through msl_make_vector).
    m = re.search(r"from vector (.*) to vector (.*) of different size", msg)
    if m and _vector_len(m.group(1)) is not None and _vector_len(m.group(1)) == _vector_len(m.group(2)):
        return True
    return False


class _Located:
    def __init__(self, origins, filename):
        self.origins = origins
        self.filename = filename

    def __call__(self, line: int) -> Tuple[str, int]:
        if self.origins and 1 <= line <= len(self.origins):
            return self.origins[line - 1]
        return self.filename, line


def _in_main(loc) -> bool:
    return loc.file is not None and loc.file.name == _MAIN


def _diagnostics(tu, where, keep) -> List[Problem]:
    out = []
    for d in tu.diagnostics:
        if not keep(d):
            continue
        if d.location.file is not None and not _in_main(d.location):
            f, line = "%s (prelude)" % Path(d.location.file.name).name, d.location.line
        else:
            f, line = where(d.location.line)
        out.append((f, line, _msl_words(d.spelling)))
    return out


# ------------------------------------------------------------------------------------------------
# AST rules
# ------------------------------------------------------------------------------------------------
_AS_RE = re.compile(r"\b__(global|constant|local|private)\b")


def _space(type_spelling: str) -> Optional[str]:
    """The address space of a (pointee) type from its spelling: a pointer type's own qualifiers follow
    its last '*'; any other type's lead it (``const __global T``, ``__local float[32]``)."""
    s = type_spelling
    for _ in range(4):   # array bounds and template arguments may hold '*'
        s = re.sub(r"\[[^\[\]]*\]|<[^<>]*>|\([^()]*\)", "", s)
    if "*" in s:
        s = s[s.rfind("*") + 1:]
    m = _AS_RE.search(s)
    return m.group(1) if m else None


def _pointer_levels(t):
    """Pointee types of every pointer/reference level of type ``t``."""
    ci = _cindex()
    K = ci.TypeKind
    out = []
    for _ in range(8):
        if t.kind == K.ELABORATED:
            t = t.get_named_type()
        if t.kind in (K.POINTER, K.LVALUEREFERENCE, K.RVALUEREFERENCE):
            t = t.get_pointee()
            out.append(t)
            continue
        break
    return out


def _is_kernel(cursor) -> bool:
    ci = _cindex()
    return any(c.kind == ci.CursorKind.ANNOTATE_ATTR and c.spelling == "msl_kernel" for c in cursor.get_children())


def _enclosing_function(cursor):
    ci = _cindex()
    K = ci.CursorKind
    c = cursor.semantic_parent
    while c is not None and c.kind not in (K.FUNCTION_DECL, K.FUNCTION_TEMPLATE, K.CXX_METHOD,
                                           K.TRANSLATION_UNIT, K.LAMBDA_EXPR):
        c = c.semantic_parent
    return c


def _param_attributes(cursor, lines: List[str]) -> List[Optional[str]]:
    """Attribute name of each parameter of a function cursor (``buffer``, ``thread_position_in_grid``,
    ...; None where a parameter has none), read from the source text after the function's name
    (libclang gives no tokens for a declaration that starts in a macro, as ``kernel`` is)."""
    loc = cursor.location
    text = "\n".join(lines[loc.line - 1:loc.line + 80])
    i = loc.column - 1 + len(cursor.spelling)
    depth, attrs, cur = 0, [], None
    started = False
    while i < len(text):
        c = text[i]
        if c == "(" and not started:
            started, depth = True, 1
        elif not started:
            if c == "<":       # explicit template arguments of an instantiation
                depth += 1
            elif c == ">":
                depth -= 1
            elif c in ";{":
                return []
        elif c in "([<":
            if text.startswith("[[", i):
                m = re.match(r"\[\[\s*(\w+)", text[i:])
                if m:
                    cur = m.group(1)
            depth += 1
        elif c in ")]>":
            depth -= 1
            if depth == 0:
                attrs.append(cur)
                return attrs
        elif c == "," and depth == 1:
            attrs.append(cur)
            cur = None
        i += 1
    return attrs


def _check_kernel(cursor, where, lines) -> List[Problem]:
    ci = _cindex()
    K = ci.TypeKind
    out = []
    f, line = where(cursor.location.line)
    name = cursor.spelling
    if cursor.result_type.spelling != "void":
        out.append((f, line, f"kernel {name}() must return void (returns {_msl_words(cursor.result_type.spelling)})"))
    params = [c for c in cursor.get_children() if c.kind == ci.CursorKind.PARM_DECL]
    attrs = _param_attributes(cursor, lines)
    if len(attrs) != len(params):
        attrs = [None] * len(params)
    for p, attr in zip(params, attrs):
        pf, pl = where(p.location.line)
        t = p.type.get_canonical()
        tname = _msl_words(p.type.spelling)
        levels = _pointer_levels(p.type)
        space = _space(levels[0].spelling) if levels else None
        if attr in _POSITION_ATTRS:
            vec_ok = _POSITION_ATTRS[attr]
            elem, n = t, 1
            if t.kind == K.EXTVECTOR:
                elem, n = t.element_type, t.element_count
            ok = elem.kind in (K.UINT, K.USHORT) and (n == 1 or (vec_ok and n in (2, 3)))
            if not ok:
                allowed = "uint or ushort" + (" (or their 2- and 3-vectors)" if vec_ok else "")
                out.append((pf, pl, f"kernel {name}(): [[{attr}]] parameter '{p.spelling}' has type {tname}; "
                                    f"Metal requires {allowed}"))
        elif attr == "threadgroup":
            if space != "local":
                out.append((pf, pl, f"kernel {name}(): [[threadgroup(n)]] parameter '{p.spelling}' has type {tname}; "
                                    "Metal requires a pointer or reference into threadgroup memory"))
        elif attr in ("buffer", None):
            if not levels or space not in ("global", "constant"):
                what = "[[buffer(n)]] parameter" if attr else "parameter without an attribute"
                out.append((pf, pl, f"kernel {name}(): {what} '{p.spelling}' has type {tname}; Metal requires a "
                                    "pointer or reference into device or constant memory"))
    return out


def _ast_problems(tu, where, lines) -> List[Problem]:
    ci = _cindex()
    CK = ci.CursorKind
    out: List[Problem] = []
    decl_kinds = (CK.PARM_DECL, CK.VAR_DECL, CK.FIELD_DECL)
    func_kinds = (CK.FUNCTION_DECL, CK.FUNCTION_TEMPLATE, CK.CXX_METHOD)
    scope_kinds = (CK.TRANSLATION_UNIT, CK.NAMESPACE)

    def visit(c):
        for ch in c.get_children():
            if ch.location.file is not None and not _in_main(ch.location):
                continue
            k = ch.kind
            if k in decl_kinds or k in func_kinds or k in (CK.TYPEDEF_DECL, CK.TYPE_ALIAS_DECL):
                f, line = where(ch.location.line)
                if k in func_kinds:
                    t = ch.result_type
                elif k in (CK.TYPEDEF_DECL, CK.TYPE_ALIAS_DECL):
                    t = ch.underlying_typedef_type
                else:
                    t = ch.type
                for level in _pointer_levels(t):
                    if _space(level.spelling) is None:
                        what = {CK.PARM_DECL: "parameter", CK.VAR_DECL: "variable", CK.FIELD_DECL: "field",
                                CK.TYPEDEF_DECL: "typedef", CK.TYPE_ALIAS_DECL: "alias"}.get(k, "return type of")
                        out.append((f, line, f"pointer or reference without an address space: {what} "
                                             f"'{ch.spelling}' of type {_msl_words(t.spelling)}"))
                        break
                if k == CK.VAR_DECL:
                    parent = ch.semantic_parent
                    tg_var = any(x.spelling == "msl_threadgroup_storage" for x in ch.walk_preorder())
                    if tg_var:
                        fn = _enclosing_function(ch)
                        if fn is None or fn.kind in scope_kinds or not _is_kernel(fn):
                            where_ = "at program scope" if fn is None or fn.kind in scope_kinds else \
                                f"in {fn.spelling}(), which is not a kernel"
                            out.append((f, line, f"threadgroup variable '{ch.spelling}' declared {where_}: "
                                                 "Metal allows threadgroup variables only in kernel functions"))
                    elif parent is not None and parent.kind in scope_kinds:
                        if "__constant" not in ch.type.spelling:
                            out.append((f, line, f"program-scope variable '{ch.spelling}' of type "
                                                 f"{_msl_words(ch.type.spelling)}: Metal requires the constant "
                                                 "address space"))
                if k in func_kinds and _is_kernel(ch):
                    out.extend(_check_kernel(ch, where, lines))
            visit(ch)

    visit(tu.cursor)
    return out


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------
def check_source(src: str, filename: str = "<source>", origins=None, cpp14: bool = True,
                 stand_ins: Optional[Dict[str, str]] = None) -> List[Problem]:
    """Return ``(file, line, message)`` for every Metal rule ``src`` breaks (see the module docstring).

    ``src``: MSL source with its local includes already inlined; ``origins``: the (file, line) of each
    of its lines (from :func:`inline_includes`; default ``(filename, line)``); ``cpp14``: also run the
    C++14 pass; ``stand_ins``: text to put in place of ``#include "name"`` lines that remain (a
    third-party header the source needs, for instance)."""
    if stand_ins:
        def stand_in(m):
            if m.group(1) not in stand_ins:
                return m.group(0)
            # the match may start with blank lines before the directive: keep them
            return "\n" * m.group(0).count("\n") + stand_ins[m.group(1)].replace("\n", " ")
        src = _INCLUDE_RE.sub(stand_in, src)
    where = _Located(origins, filename)
    text = rewrite(src)
    ci = _cindex()
    problems: List[Problem] = []
    tu = _parse(text, _OPENCL_ARGS)
    problems += _diagnostics(
        tu, where, lambda d: d.severity >= ci.Diagnostic.Error and not _ignored_opencl_diagnostic(d.spelling))
    problems += _ast_problems(tu, where, text.split("\n"))
    if cpp14:
        tu14 = _parse(text, _CPP14_ARGS)
        problems += [(f, line, "not C++14 (Metal is based on C++14): " + msg) for f, line, msg in _diagnostics(
            tu14, where, lambda d: "C++17" in d.spelling or "c++17" in (d.option or "")
            or "requires template arguments" in d.spelling or "deduction guide" in d.spelling)]
    seen, unique = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return sorted(unique, key=lambda p: (p[0], p[1], p[2]))


def check_file(path, root=None, cpp14: bool = True, stand_ins=None) -> List[Problem]:
    """Check one ``.metal`` file with its local includes inlined (see :func:`inline_includes`)."""
    text, origins = inline_includes(path, root)
    return check_source(text, str(path), origins, cpp14=cpp14, stand_ins=stand_ins)


def shader_files() -> List[Path]:
    """Every ``.metal`` file under the package's shader directory (headers are checked through them)."""
    from .runtime import shader_dir
    return sorted(shader_dir().rglob("*.metal"))


def check_shaders(paths=None, cpp14: bool = True) -> List[Problem]:
    from .runtime import shader_dir
    root = shader_dir()
    out: List[Problem] = []
    for p in (paths or shader_files()):
        out += check_file(p, root, cpp14=cpp14)
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a) for a in argv] or shader_files()
    try:
        problems = check_shaders(paths)
    except ClangUnavailable as e:
        print(e, file=sys.stderr)
        return 2
    for f, line, msg in problems:
        print(f"{f}:{line}: {msg}")
    print(f"checked {len(paths)} files with clang, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
