"""Writes docs/api.md, the API reference, from the public modules' ``__all__`` and docstrings.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md differs from what the docstrings give

A name is documented in full under the first module (in ``MODULES`` order) that exports it; later
modules that re-export the same object link to that entry. ``tests/test_docstrings.py`` checks that
every listed name has a docstring and that docs/api.md is current.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

# Public modules, in reading order: the package, its submodules, compatibility layers, sage_mps.
MODULES = [
    "natten_mps",
    "natten_mps.functional",
    "natten_mps.varlen",
    "natten_mps.split",
    "natten_mps.merge",
    "natten_mps.nn",
    "natten_mps.support",
    "natten_mps.compat",
    "natten_mps.compat.v014",
    "natten_mps.compat.v015",
    "natten_mps.compat.v017",
    "natten_mps.compat.v020",
    "natten_mps.extras.allin1",
    "natten_mps.utils.window",
    "sage_mps",
]


def public_names(module) -> list:
    """The module's ``__all__`` without ``__version__`` (a string, documented by the module)."""
    return [n for n in getattr(module, "__all__", []) if n != "__version__"]


def _anchor(module_name: str, name: str) -> str:
    return f"{module_name}.{name}".replace(".", "").replace("_", "").lower()


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj)).replace("'", "")
    except (TypeError, ValueError):
        return "(...)"


def _block(doc) -> list:
    """A docstring as a fenced block (it reads as ``help()`` shows it; markdown would reflow it)."""
    return ["```text", doc.strip(), "```", ""] if doc else ["(no docstring)", ""]


def _entry(module_name: str, name: str, obj) -> list:
    lines = [f'<a id="{_anchor(module_name, name)}"></a>', ""]
    if inspect.isclass(obj):
        lines += [f"### class `{module_name}.{name}{_signature(obj)}`", ""] + _block(inspect.getdoc(obj))
        for meth in ("forward",):
            fn = obj.__dict__.get(meth) or next((c.__dict__[meth] for c in obj.__mro__ if meth in c.__dict__), None)
            if fn is not None and fn.__doc__:
                lines += [f"`{name}.{meth}{_signature(fn)}`", ""] + _block(inspect.getdoc(fn))
    elif inspect.ismodule(obj):
        lines += [f"### module `{obj.__name__}`", "", (inspect.getdoc(obj) or "").split("\n\n")[0], ""]
    elif callable(obj):
        lines += [f"### `{module_name}.{name}{_signature(obj)}`", ""] + _block(inspect.getdoc(obj))
    else:
        lines += [f"### `{module_name}.{name}`", "", f"`{obj!r}`", ""]
    return lines


def render() -> str:
    seen = {}
    out = ["# API reference", "",
           "Generated from the docstrings by `python docs/gen_api.py` (do not edit by hand). `help(name)` in",
           "Python shows the same text. Shapes are heads-last (`[batch, *spatial, heads, head_dim]`) unless",
           "stated; see the README for the semantics shared by every op.", "", "Modules:", ""]
    out += [f"- [`{m}`](#{m.replace('.', '').replace('_', '').lower()})" for m in MODULES]
    out.append("")
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        out += [f'<a id="{module_name.replace(".", "").replace("_", "").lower()}"></a>', "",
                f"## `{module_name}`", ""] + _block(inspect.getdoc(module))
        for name in public_names(module):
            obj = getattr(module, name)
            if id(obj) in seen and not isinstance(obj, (int, float, str, bool)):
                first_module, first_name = seen[id(obj)]
                out += [f"- `{name}`: see [`{first_module}.{first_name}`](#{_anchor(first_module, first_name)})"]
                continue
            seen[id(obj)] = (module_name, name)
            out += _entry(module_name, name, obj)
        out.append("")
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(ROOT))
    text = render()
    if "--check" in argv:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print("docs/api.md is out of date: run python docs/gen_api.py")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
