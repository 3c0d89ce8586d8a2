"""Compatibility shims for code written against older NATTEN releases.

``natten_mps.compat.v014`` / ``v015`` / ``v017`` / ``v020`` / ``v021`` hold the functional and module
entry points those NATTEN releases exported, with their layouts (heads-first split ops before 0.20),
argument orders and parameter names, computed by this package; each has ``__version__`` and a
``functional`` submodule that is that release's ``natten.functional``. ``for_version("0.17.1")``
picks the package for a version string. To run code that does ``import natten`` unmodified, use
:func:`natten_mps.install_as_natten` or ``python -m natten_mps.as_natten`` (they serve these
packages under the name ``natten``, laid out as each release was).
"""
from __future__ import annotations

import importlib
import re

__all__ = ["for_version", "v014", "v015", "v017", "v020", "v021"]

_SHIMS = (((0, 15), "v014"), ((0, 17), "v015"), ((0, 20), "v017"), ((0, 21), "v020"))


def for_version(version_string: str):
    """The shim package for NATTEN ``version_string``: < 0.15 -> v014, 0.15-0.16 -> v015,
    0.17-0.19 -> v017, 0.20 -> v020, >= 0.21 -> v021."""
    if not isinstance(version_string, str):
        raise TypeError(f"version_string must be a str such as '0.17.1', got {version_string!r}")
    m = re.match(r"^\s*v?(\d+)\.(\d+)", version_string)
    if m is None:
        raise ValueError(f"version_string must look like 'MAJOR.MINOR[.PATCH]', got {version_string!r}")
    version = (int(m.group(1)), int(m.group(2)))
    for bound, name in _SHIMS:
        if version < bound:
            return importlib.import_module(f"{__name__}.{name}")
    return importlib.import_module(f"{__name__}.v021")


def __getattr__(name):
    if name in ("v014", "v015", "v017", "v020", "v021"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
