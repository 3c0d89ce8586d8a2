"""Layouts of the NATTEN releases this package can stand in for: which modules each had
(``natten``, ``natten.functional``, ``natten.context``, ...) and which names each module held,
read from each release's sources, mapped to the objects of :mod:`natten_mps.compat` that answer them.

A release line is picked by ``"0.14"``, ``"0.15"``, ``"0.17"``, ``"0.20"`` or ``"0.21"`` (then its
last patch release is reported) or by a full version such as ``"0.17.1"`` (reported as given; within
0.17, 0.17.0-0.17.4 still had the deprecated ``natten*`` names in ``natten.functional``, 0.17.5
removed them). ``DEFAULT_VERSION`` is the newest line (see docs/upstream-natten.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

__all__ = ["Release", "release", "LINES", "DEFAULT_VERSION", "where_defined"]

LINES = {"0.14": "0.14.6", "0.15": "0.15.1", "0.17": "0.17.5", "0.20": "0.20.1", "0.21": "0.21.7"}
DEFAULT_VERSION = "0.21"

C = "natten_mps.compat"
_NA12 = ["NeighborhoodAttention1D", "NeighborhoodAttention2D"]
_NA123 = _NA12 + ["NeighborhoodAttention3D"]
_F014 = ["natten1dqkrpb", "natten1dqk", "natten1dav", "natten2dqkrpb", "natten2dqk", "natten2dav"]
_PROBES015 = ["has_cuda", "has_half", "has_bfloat", "has_gemm", "has_tf32_gemm", "has_fp32_gemm", "has_fp64_gemm",
              "enable_tf32", "disable_tf32", "enable_tiled_na", "disable_tiled_na", "enable_gemm_na",
              "disable_gemm_na"]
_CONTEXT020 = ["use_deterministic_algorithms", "are_deterministic_algorithms_enabled", "use_kv_parallelism_in_fused_na",
               "is_kv_parallelism_in_fused_na_enabled", "set_memory_usage_preference", "get_memory_usage_preference",
               "is_memory_usage_default", "is_memory_usage_strict", "is_memory_usage_unrestricted",
               "is_flex_compile_allowed", "is_flex_compile_backprop_allowed", "allow_flex_compile",
               "allow_flex_compile_backprop", "disable_flex_compile", "disable_flex_compile_backprop"]
_FUSED020 = ["na1d", "na2d", "na3d", "attention", "merge_attentions"]

# module (relative to ``natten``; "" is ``natten`` itself) -> [(backing module, [names])]
Layout = Dict[str, List[Tuple[str, List[str]]]]


def _layout_014() -> Layout:
    return {
        "": [(f"{C}.v014", _NA12)],
        "functional": [(f"{C}.v014.functional", _F014)],
        "natten1d": [(f"{C}.v014", ["NeighborhoodAttention1D"]),
                     (f"{C}.v014.functional", ["natten1dqkrpb", "natten1dav"])],
        "natten2d": [(f"{C}.v014", ["NeighborhoodAttention2D"]),
                     (f"{C}.v014.functional", ["natten2dqkrpb", "natten2dav"])],
        "flops": [(f"{C}._flops", ["add_natten_handle"])],
    }


def _layout_015() -> Layout:
    f015 = [(f"{C}.v015.functional", None)]
    return {
        "": [(f"{C}.v015", _NA123 + _PROBES015)],
        "functional": f015,
        "natten1d": [(f"{C}.v015", ["NeighborhoodAttention1D"])],
        "natten2d": [(f"{C}.v015", ["NeighborhoodAttention2D"])],
        "natten3d": [(f"{C}.v015", ["NeighborhoodAttention3D"])],
        "flops": [(f"{C}._flops", ["add_natten_handle"])],
    }


def _layout_017(patch: int) -> Layout:
    from .v017 import CONTEXT
    from .v017.functional import DEPRECATED
    functional = [(f"{C}.v017.functional", None)]
    if patch < 5:
        functional.append((f"{C}.v017.functional", DEPRECATED))
    layout = {
        "": [(f"{C}.v017", _NA123 + CONTEXT)],
        "functional": functional,
        "context": [(f"{C}.v017", CONTEXT + ["MemoryUsagePreference"])],
        "experimental": [(f"{C}.v017.functional", ["na1d", "na2d", "na3d"])],
        "flops": [(f"{C}._flops", ["add_natten_handle"])],
        "types": [(f"{C}.types", None)],
        "utils": [(f"{C}.utils", ["check_all_args", "get_num_na_weights"])],
        "utils.log": [(f"{C}.utils", ["get_logger"])],
    }
    for rank in (1, 2, 3):
        layout[f"na{rank}d"] = [(f"{C}.v017", [f"NeighborhoodAttention{rank}D"])]
        layout[f"natten{rank}d"] = [(f"{C}.v017", [f"NeighborhoodAttention{rank}D"])]
    return layout


def _layout_020(pkg: str) -> Layout:
    from importlib import import_module
    queries = import_module(f"{C}.{pkg}").CONFIG_QUERIES
    return {
        "": [(f"{C}.{pkg}", _NA123 + _CONTEXT020 + queries + ["HAS_LIBNATTEN"] + _FUSED020)],
        "functional": [(f"{C}.{pkg}.functional", None)],
        "modules": [(f"{C}.{pkg}", _NA123)],
        "context": [(f"{C}.{pkg}", _CONTEXT020)],
        "attn_merge": [(f"{C}.{pkg}", ["merge_attentions"])],
        "version": [],
        "types": [(f"{C}.types", None)],
        "utils": [],
        "utils.log": [(f"{C}.utils", ["get_logger"])],
    }


@dataclass(frozen=True)
class Release:
    """One NATTEN release: ``version`` (reported as ``natten.__version__`` and to
    ``importlib.metadata``), ``line`` (``"0.17"``), ``package`` (the :mod:`natten_mps.compat`
    package answering it) and ``modules`` (see ``Layout``). Modules with submodules are packages."""
    version: str
    line: str
    package: str
    modules: Layout = field(repr=False, compare=False, hash=False)

    def is_package(self, sub: str) -> bool:
        return sub == "" or any(m.startswith(sub + ".") for m in self.modules)

    def eager(self) -> List[str]:
        """Submodules that ``import natten`` loaded (upstream's ``__init__`` imported them, directly or
        not), so code may use ``natten.functional.x`` after a bare ``import natten``: all but
        ``flops`` and, in 0.17, the deprecated ``natten1d/2d/3d`` (they warned when imported)."""
        lazy = {"flops"} | ({"natten1d", "natten2d", "natten3d"} if self.line == "0.17" else set())
        return [m for m in self.modules if m and m not in lazy]


def release(version: str) -> Release:
    """The :class:`Release` for ``version`` (``"0.17"``, ``"0.17.1"``, ``"v0.21.7"``). ``ValueError``
    for a release this package does not stand in for, ``TypeError`` for a non-string."""
    if not isinstance(version, str):
        raise TypeError(f"version must be a str such as '0.17' or '0.14.6', got {version!r}")
    m = re.fullmatch(r"\s*v?(0\.\d+)(?:\.(\d+))?\s*", version)
    if m is None or m.group(1) not in LINES:
        raise ValueError(f"version must name a NATTEN release line this package serves ({', '.join(LINES)}), "
                         f"optionally with a patch number such as '0.17.1'; got {version!r}")
    line = m.group(1)
    full = LINES[line] if m.group(2) is None else f"{line}.{int(m.group(2))}"
    patch = int(full.rsplit(".", 1)[1])
    layouts = {"0.14": _layout_014, "0.15": _layout_015, "0.17": lambda: _layout_017(patch),
               "0.20": lambda: _layout_020("v020"), "0.21": lambda: _layout_020("v021")}
    package = {"0.14": "v014", "0.15": "v015", "0.17": "v017", "0.20": "v020", "0.21": "v021"}[line]
    return Release(full, line, f"{C}.{package}", layouts[line]())


def names(rel: Release, sub: str) -> List[Tuple[str, str]]:
    """``(backing module, name)`` pairs of module ``sub`` of ``rel`` (``None`` lists mean the
    backing module's ``__all__``)."""
    from importlib import import_module
    out = []
    for backing, listed in rel.modules[sub]:
        for name in (import_module(backing).__all__ if listed is None else listed):
            out.append((backing, name))
    return out


def where_defined(sub: str, name: str) -> List[str]:
    """The releases whose ``natten.<sub>`` held ``name`` (for error messages)."""
    def has(rel):
        return sub in rel.modules and any(n == name for _, n in names(rel, sub))
    found = []
    for line in LINES:
        if has(release(line)):
            found.append(line)
        elif line == "0.17" and has(release("0.17.4")):
            found.append("0.17.0-0.17.4")
    return found
