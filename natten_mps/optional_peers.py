"""Optional peer packages, imported only where a benchmark or the doctor compares against them.

A failed import of ``mlx`` must not leave half a package behind: on Linux, ``pip install mlx``
without its CPU extra installs a namespace package whose ``mlx.core`` cannot load, and a bare
``mlx`` left in ``sys.modules`` makes other libraries (einops, for one) believe MLX is usable.
"""
from __future__ import annotations

import sys
from typing import Tuple


def import_natten_mlx() -> Tuple[object, object]:
    """``(mlx.core, natten_mlx)``; on any failure the partly imported modules are removed from
    ``sys.modules`` and the exception is re-raised (callers treat it as "peer absent")."""
    try:
        import mlx.core as mx
        import natten_mlx
    except Exception:
        for name in [n for n in sys.modules if n.split(".")[0] in ("mlx", "natten_mlx")]:
            del sys.modules[name]
        raise
    return mx, natten_mlx
