"""The code reads top-down (public API -> ops -> backends -> Metal toolchain): no two modules of the
package import each other at module level."""
import ast
import pathlib

ROOTS = [pathlib.Path(__file__).resolve().parent.parent / name for name in ("natten_mps", "sage_mps")]


def module_imports():
    mods = {}
    for root in ROOTS:
        for f in root.rglob("*.py"):
            if "path_entry" in f.parts:          # the alias placeholder (a separate top-level package)
                continue
            parts = f.relative_to(root.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f
    edges = {}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.parse(f.read_text()).body:          # module level only (not inside functions)
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    m = ".".join(base + ([node.module] if node.module else []))
                else:
                    m = node.module or ""
                deps |= {t for t in [m] + [f"{m}.{a.name}" for a in node.names] if t in mods and t != name}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        edges[name] = deps
    return edges


def test_no_two_modules_import_each_other():
    edges = module_imports()
    assert len(edges) > 30
    cycles = sorted((a, b) for a, ds in edges.items() for b in ds
                    if a < b and a in edges.get(b, ()) and not (b.startswith(a + ".") or a.startswith(b + ".")))
    assert not cycles, f"modules importing each other: {cycles}"


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "natten_mps"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .a import x\n")
    monkeypatch.setattr(__import__(__name__), "ROOTS", [pkg])
    edges = module_imports()
    assert "natten_mps.b" in edges["natten_mps.a"] and "natten_mps.a" in edges["natten_mps.b"]
