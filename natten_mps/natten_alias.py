"""Serve ``import natten`` from this package, laid out as one NATTEN release (opt-in).

``install_as_natten(version="0.17")`` puts a finder at the front of ``sys.meta_path``. From then on
``import natten``, ``from natten.functional import na2d_qk``, ``import natten.context`` ... give
namespaces built from :mod:`natten_mps.compat.releases`: each module that release had, holding the
names it held, bound to the objects of :mod:`natten_mps.compat` (no module of this package is loaded
twice; the namespaces have no file of their own). ``natten.__version__`` is the release's version;
``importlib.metadata.version("natten")`` answers it too (the finder's ``find_distributions``), and
``importlib.util.find_spec("natten")`` finds the alias; nothing is written to site-packages.

``uninstall_natten_alias()`` removes the finder and the alias modules (and puts back a genuine
``natten`` that ``replace=True`` had set aside). A genuine upstream NATTEN already imported is never
shadowed silently: ``install_as_natten`` raises ``RuntimeError`` unless ``replace=True``. One that is
installed but not imported is shadowed while the alias is installed (the finder comes first).

Code that must not change at all runs under ``python -m natten_mps.as_natten`` (see
:mod:`natten_mps.as_natten`); processes it starts find the alias through ``PYTHONPATH`` and
``NATTEN_MPS_AS_NATTEN`` (see :func:`path_entry`).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys
import types
from pathlib import Path
from typing import Optional

from .compat import releases

__all__ = ["install_as_natten", "uninstall_natten_alias", "installed_natten_alias", "path_entry", "ENV_VAR",
           "NattenAliasFinder"]

ENV_VAR = "NATTEN_MPS_AS_NATTEN"
_NAME = "natten"


def _is_ours(name: str) -> bool:
    return name == _NAME or name.startswith(_NAME + ".")


class _AliasDistribution(importlib.metadata.Distribution):
    """Metadata of the served release (name ``natten``, its version); no files."""

    def __init__(self, release: releases.Release):
        self._release = release

    def read_text(self, filename):
        if filename == "METADATA":
            return (f"Metadata-Version: 2.1\nName: natten\nVersion: {self._release.version}\n"
                    f"Summary: NATTEN {self._release.version} API served by natten_mps (natten-mps-kernels)\n")
        if filename == "top_level.txt":
            return "natten\n"
        return None

    def locate_file(self, path):
        return Path(__file__).parent / path


class _MissingName:
    """``__getattr__`` of an alias module: the error names the releases that had the attribute."""

    def __init__(self, release: releases.Release, sub: str):
        self.release, self.sub = release, sub

    def __call__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        module = "natten" + (f".{self.sub}" if self.sub else "")
        where = releases.where_defined(self.sub, name)
        hint = (f"; it is in NATTEN {', '.join(where)}: serve that release with "
                f"natten_mps.install_as_natten(version=...) or python -m natten_mps.as_natten --natten-version ..."
                if where else "")
        raise AttributeError(f"module {module!r} (NATTEN {self.release.version} API served by natten_mps) has no "
                             f"attribute {name!r}{hint}")


class NattenAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds the ``natten`` alias modules of one release (``self.release``)."""

    def __init__(self, release: releases.Release):
        self.release = release
        self.set_aside = {}            # genuine natten modules taken out of sys.modules by replace=True

    def __repr__(self):
        return f"<NattenAliasFinder NATTEN {self.release.version}>"

    # -- finder ------------------------------------------------------------------------------------
    def find_spec(self, fullname, path=None, target=None):
        if not _is_ours(fullname):
            return None
        sub = fullname[len(_NAME) + 1:]
        if sub not in self.release.modules:
            return None
        origin = f"natten_mps alias of NATTEN {self.release.version}"
        return importlib.machinery.ModuleSpec(fullname, self, origin=origin, is_package=self.release.is_package(sub))

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        name = getattr(context, "name", None)
        if name is None or name.lower().replace("-", "_") == _NAME:
            yield _AliasDistribution(self.release)

    def invalidate_caches(self):
        pass

    # -- loader ------------------------------------------------------------------------------------
    def create_module(self, spec):
        sub = spec.name[len(_NAME) + 1:]
        module = types.ModuleType(spec.name, f"NATTEN {self.release.version}'s {spec.name}, served by natten_mps "
                                             f"(objects of {self.release.package}).")
        exported = []
        for backing, name in releases.names(self.release, sub):
            setattr(module, name, getattr(importlib.import_module(backing), name))
            exported.append(name)
        if sub in ("", "version"):
            module.__version__ = self.release.version
            exported.append("__version__")
        module.__all__ = exported
        module.__getattr__ = _MissingName(self.release, sub)
        return module

    def exec_module(self, module):
        if module.__name__ == _NAME:
            for sub in self.release.eager():
                importlib.import_module(f"{_NAME}.{sub}")


def installed_natten_alias() -> Optional[NattenAliasFinder]:
    """The installed finder, or None."""
    for finder in sys.meta_path:
        if isinstance(finder, NattenAliasFinder):
            return finder
    return None


def _genuine_natten_imported() -> Optional[types.ModuleType]:
    mod = sys.modules.get(_NAME)
    if mod is None:
        return None
    spec = getattr(mod, "__spec__", None)
    if spec is not None and isinstance(spec.loader, NattenAliasFinder):
        return None
    return mod


def install_as_natten(version: Optional[str] = None, *, replace: bool = False) -> NattenAliasFinder:
    """Serve ``import natten`` from this package as NATTEN ``version`` until
    :func:`uninstall_natten_alias`. Call it before the code that imports ``natten`` is imported.

    ``version``: ``"0.14"``, ``"0.15"``, ``"0.17"``, ``"0.20"``, ``"0.21"`` or a full version
    (``"0.17.1"``); None gives ``releases.DEFAULT_VERSION`` (0.21). Installing again with the same
    version returns the installed finder; another version replaces it (modules already bound by
    client code keep the objects they hold). ``replace``: set aside a genuine ``natten`` that is
    already imported (restored by :func:`uninstall_natten_alias`); without it that case raises
    ``RuntimeError``. Returns the finder (``.release.version`` is the version served).
    """
    rel = releases.release(releases.DEFAULT_VERSION if version is None else version)
    if not isinstance(replace, bool):
        raise TypeError(f"replace must be a bool, got {replace!r}")
    current = installed_natten_alias()
    if current is not None:
        if current.release.version == rel.version:
            return current
        set_aside = current.set_aside
        uninstall_natten_alias(_restore=False)
    else:
        set_aside = {}
    genuine = _genuine_natten_imported()
    if genuine is not None:
        if not replace:
            where = getattr(genuine, "__file__", None) or "an unknown location"
            raise RuntimeError(
                f"natten_mps.install_as_natten: a genuine NATTEN {getattr(genuine, '__version__', '?')} is already "
                f"imported (from {where}); the alias would not reach code that already holds it. Install the alias "
                f"before anything imports natten (or run the program under python -m natten_mps.as_natten), "
                f"uninstall upstream NATTEN (pip uninstall natten) or use an environment without it, or pass "
                f"replace=True to set the imported modules aside.")
        for name in [n for n in sys.modules if _is_ours(n)]:
            set_aside[name] = sys.modules.pop(name)
    finder = NattenAliasFinder(rel)
    finder.set_aside = set_aside
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()
    return finder


def uninstall_natten_alias(_restore: bool = True) -> bool:
    """Remove the alias: its finder, its modules from ``sys.modules`` and, when it set aside a
    genuine ``natten`` (``replace=True``), put that back. Returns False when none was installed."""
    finder = installed_natten_alias()
    if finder is None:
        return False
    sys.meta_path.remove(finder)
    for name in [n for n, m in sys.modules.items() if _is_ours(n)
                 and isinstance(getattr(getattr(m, "__spec__", None), "loader", None), NattenAliasFinder)]:
        del sys.modules[name]
    if _restore:
        sys.modules.update(finder.set_aside)
    importlib.invalidate_caches()
    return True


def path_entry() -> str:
    """A directory holding only a ``natten`` placeholder package. With it on ``PYTHONPATH``, a
    Python process that imports ``natten`` gets the alias of the release named by
    ``NATTEN_MPS_AS_NATTEN`` (default: ``releases.DEFAULT_VERSION``). The runner puts it there for
    the processes it starts; removing it from ``PYTHONPATH`` turns the alias off."""
    return str(Path(__file__).parent / "compat" / "path_entry")


def _serve_from_path_entry(placeholder_name: str) -> None:
    """Called by the placeholder ``natten`` package of :func:`path_entry` while it is imported:
    installs the alias and replaces the placeholder in ``sys.modules`` with the alias package."""
    if placeholder_name != _NAME:
        return
    del sys.modules[_NAME]
    install_as_natten(os.environ.get(ENV_VAR) or None)
    importlib.import_module(_NAME)          # the alias now stands in sys.modules["natten"]
