"""Compatibility shims for code written against older NATTEN releases.

``natten_mps.compat.v014`` / ``v015`` / ``v017`` / ``v020`` hold the functional and module entry points
those NATTEN releases exported, with their layouts (heads-first split ops before 0.20), argument
orders and parameter names, computed by this package; ``for_version("0.17.1")`` picks the module
for a version string. Typical use: ``import natten_mps.compat.v017 as natten``.
"""
from __future__ import annotations

import importlib
import re

__all__ = ["for_version", "v014", "v015", "v017", "v020"]

_SHIMS = (((0, 15), "v014"), ((0, 17), "v015"), ((0, 20), "v017"))


def for_version(version_string: str):
    """The shim module for NATTEN ``version_string``: < 0.15 -> v014, 0.15-0.16 -> v015,
    0.17-0.19 -> v017, >= 0.20 -> v020 (0.20 and 0.21 share their API)."""
    if not isinstance(version_string, str):
        raise TypeError(f"version_string must be a str such as '0.17.1', got {version_string!r}")
    m = re.match(r"^\s*v?(\d+)\.(\d+)", version_string)
    if m is None:
        raise ValueError(f"version_string must look like 'MAJOR.MINOR[.PATCH]', got {version_string!r}")
    version = (int(m.group(1)), int(m.group(2)))
    for bound, name in _SHIMS:
        if version < bound:
            return importlib.import_module(f"{__name__}.{name}")
    return importlib.import_module(f"{__name__}.v020")


def __getattr__(name):
    if name in ("v014", "v015", "v017", "v020"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
