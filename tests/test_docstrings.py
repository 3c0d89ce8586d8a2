"""Every public module and name has a docstring that reads well in ``help()``; functions that take tensors
state their shapes; docs/api.md is what the docstrings give (``python docs/gen_api.py`` rewrites it)."""
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import gen_api  # noqa: E402

# Parameters that are tensors in this package's APIs (where there is no annotation to say so).
TENSOR_PARAMS = {"query", "key", "value", "q", "k", "v", "attn", "x", "input", "qkv", "outputs", "lse_tensors",
                 "seq_lens", "spatial_sizes", "indices", "rpb", "cu_seqlens", "weights"}
# A shape in the docstring: brackets holding a dimension name, or the word "shape".
SHAPE = re.compile(r"\[[^\]]*\b(B|batch|L\w*|N\w*|H\w*|heads?|D\w*|dim|X|Y|Z|T|total|E|K\w*)\b[^\]]*\]|\bshape\b")


def _public():
    seen, cases = set(), []
    for module_name in gen_api.MODULES:
        module = importlib.import_module(module_name)
        for name in gen_api.public_names(module):
            obj = getattr(module, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            cases.append(pytest.param(module_name, name, id=f"{module_name}.{name}"))
    return cases


def _own_doc(obj):
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__")
    return getattr(obj, "__doc__", None)


def _takes_tensors(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any("Tensor" in str(p.annotation) or p.name in TENSOR_PARAMS for p in params)


@pytest.mark.parametrize("module_name", gen_api.MODULES)
def test_module_has_a_docstring(module_name):
    doc = importlib.import_module(module_name).__doc__
    assert doc and len(doc.strip()) > 20, f"{module_name} has no module docstring"


@pytest.mark.parametrize("module_name,name", _public())
def test_public_name_has_a_docstring(module_name, name):
    obj = getattr(importlib.import_module(module_name), name)
    doc = _own_doc(obj)
    where = getattr(obj, "__module__", module_name)
    assert doc and doc.strip(), f"{module_name}.{name} (defined in {where}) has no docstring"
    fn = obj.__init__ if inspect.isclass(obj) else obj
    if callable(fn) and _takes_tensors(fn) or inspect.isclass(obj) and hasattr(obj, "forward"):
        text = doc if not inspect.isclass(obj) else doc + (getattr(obj.forward, "__doc__", "") or "")
        assert SHAPE.search(text), f"{module_name}.{name} takes tensors but its docstring states no shape"


def test_shape_rule_rejects_a_docstring_without_shapes():
    def f(query, key):
        """Attention of the query over the key."""
    assert _takes_tensors(f) and not SHAPE.search(f.__doc__)
    assert SHAPE.search("``query`` ``[B, L, H, D]``") and SHAPE.search("returns the output, same shape")


def test_api_reference_is_current():
    assert gen_api.main(["--check"]) == 0, "docs/api.md is out of date: run python docs/gen_api.py"
