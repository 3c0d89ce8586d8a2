"""sage_mps: SageAttention-style attention for PyTorch (Metal on Apple Silicon, PyTorch elsewhere).

``sageattn`` follows the ``sageattention`` package's API. K smoothing subtracts the mean key over
the sequence before the scores are formed: every score of a query row shifts by the same constant
``scale * q . mean(k)``, so the softmax (and the output) is unchanged while outliers shrink. With
``return_lse=True`` the LSE is corrected back exactly by adding that constant.

``qk_quant="int8"`` reproduces SageAttention 1.x's INT8 QK numerics (:mod:`sage_mps.int8`): on Metal
quantization kernels and an integer-dot attention kernel (:mod:`sage_mps.metal_int8`), elsewhere
PyTorch ops; the backward is straight-through.

The attention itself runs through ``natten_mps``'s registered ``attention_forward`` op, so it
trains, compiles and runs on the Metal path under MPS (or the emulator) like the rest.
"""
from .core import sageattn, sageattn_varlen

from natten_mps.metal import runtime as _runtime  # noqa: E402
from . import metal_int8 as _metal_int8  # noqa: E402

_runtime.precompile([_metal_int8.INT8_SHADER])     # on a Mac, compiled once at import

from natten_mps.version import __version__  # noqa: E402  (one version for the distribution)
__all__ = ["sageattn", "sageattn_varlen", "__version__"]
