"""Static check of .metal sources for constructs g++ (the emulator) accepts but Metal rejects.

Run on every shader by the test suite: ``python -m natten_mps.metal.static_check [files]``.
A lexical check: what a C++ front end accepts but Metal forbids. The compiler-grade check
(:mod:`natten_mps.metal.clang_check`, docs/msl-check.md) parses the shaders with clang under Metal's
address-space, scope, vector, kernel-signature and C++14 rules; the rules here are the ones it cannot see.
Rules (each reported with file and line):

* ``double``: Metal has no double-precision type.
* ``std::``: the C++ standard library does not exist in MSL.
* ``printf``/``malloc``/``free``/``new``/``delete``: no I/O or dynamic allocation on the GPU.
* a pointer parameter without an address space (``device``, ``constant``, ``threadgroup``, ``thread``).
* recursion: a function whose body calls itself.
* reserved words (``kernel``, ``device``, ``constant``, ``threadgroup``, ``thread``) used as names.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Tuple

_ADDRESS_SPACES = ("device", "constant", "threadgroup", "thread")


def _strip(src: str) -> str:
    def repl(m):
        s = m.group(0)
        if s.startswith("//"):
            return ""
        if s.startswith("/*"):
            return "\n" * s.count("\n")
        return '""'
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"', repl, src, flags=re.S)


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _closing(src: str, pos: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket closing the one at ``pos`` (or the end of the source)."""
    depth = 0
    for i in range(pos, len(src)):
        if src[i] == open_ch:
            depth += 1
        elif src[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    return len(src)


def _functions(src: str):
    """Yield (name, params_text, body_text, start) of function definitions."""
    for m in re.finditer(r"\b([A-Za-z_]\w*)\s*\(", src):
        name = m.group(1)
        if name in ("if", "for", "while", "switch", "return", "sizeof", "defined", "static_assert"):
            continue
        i = _closing(src, m.end() - 1, "(", ")")
        after = re.match(r"\s*(const\s*)?\{", src[i + 1:])
        if not after:
            continue
        prefix = src[max(0, m.start() - 120):m.start()]
        if not re.search(r"[\w>&*]\s*$", prefix):
            continue  # a call, not a definition
        start = i + after.end()
        j = _closing(src, start, "{", "}")
        yield name, src[m.end():i], src[start:j + 1], m.start()


def _top_level_commas(params: str) -> List[str]:
    """Split a parameter list at commas outside <...>, (...) and [...]."""
    out, depth, cur = [], 0, []
    for ch in params:
        depth += (ch in "<([") - (ch in ">)]")
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def check_source(src: str, filename: str = "<source>") -> List[Tuple[str, int, str]]:
    """Return ``(file, line, message)`` for every rule the source breaks."""
    clean = _strip(src)
    problems = []
    rules = [
        (r"\bdouble\b", "'double' is not supported by Metal"),
        (r"\bstd\s*::", "the C++ standard library ('std::') is not available in Metal"),
        (r"\b(printf|malloc|calloc|realloc|free)\s*\(", "no I/O or dynamic allocation in Metal"),
        (r"\bnew\s+[A-Za-z_]|\bdelete\b", "no dynamic allocation ('new'/'delete') in Metal"),
        (r"\b(?:long|int|float|half|uint|bool|auto)\s+(kernel|device|constant|threadgroup|thread)\s*[=;,)]",
         "reserved Metal keyword used as a name"),
    ]
    for pattern, message in rules:
        for m in re.finditer(pattern, clean):
            problems.append((filename, _line(clean, m.start()), message))
    for name, params, body, start in _functions(clean):
        for p in _top_level_commas(params):
            if "*" in p and not any(re.search(rf"\b{a}\b", p) for a in _ADDRESS_SPACES):
                problems.append((filename, _line(clean, start),
                                 f"pointer parameter without an address space in {name}(): {p.strip()}"))
        if re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", body):
            problems.append((filename, _line(clean, start), f"recursion: {name}() calls itself"))
    return problems


def check_files(paths) -> List[Tuple[str, int, str]]:
    out = []
    for p in paths:
        out += check_source(Path(p).read_text(), str(p))
    return out


def main(argv=None) -> int:
    from .runtime import shader_dir
    paths = argv if argv else sorted(str(p) for p in shader_dir().rglob("*") if p.suffix in (".metal", ".h"))
    problems = check_files(paths)
    for f, line, msg in problems:
        print(f"{f}:{line}: {msg}")
    print(f"checked {len(paths)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
