"""natten_mps: neighborhood attention for PyTorch with Metal kernels on Apple Silicon.

Layering: ``functional`` (public API, argument checks) -> ``ops`` (torch.library custom ops with
autograd) -> ``backends.metal`` / ``backends.pure`` (device implementations) -> ``shaders/*.metal``
(through ``metal.runtime``; the CPU emulator in ``metal.emulator`` runs the same sources on Linux, and
``metal.cuda`` translates them to CUDA for an NVIDIA GPU).
"""
from .backend import get_backend, last_backend, set_backend
from .functional import attention, merge_attentions, na1d, na2d, na3d
from .split import na1d_av, na1d_qk, na2d_av, na2d_qk, na3d_av, na3d_qk
from .varlen import na1d_varlen, na2d_varlen, na3d_varlen
from . import nn  # noqa: F401  (natten_mps.nn, as natten-mps has it)
from .nn import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .metal.runtime import emulation_enabled, metal_on_cuda_enabled, set_emulation, set_metal_on_cuda
from .support import get_support_matrix, has_metal, has_mps
from .natten_alias import install_as_natten, uninstall_natten_alias  # serve ``import natten`` (opt-in)
from . import tuning  # noqa: F401  (natten_mps.tuning: on-device autotuning of the Metal tilings)
from .tuning import tune

from .version import __version__  # noqa: E402,F401

__all__ = ["na1d", "na2d", "na3d", "attention", "merge_attentions", "na1d_qk", "na1d_av", "na2d_qk", "na2d_av",
           "na3d_qk", "na3d_av", "na1d_varlen", "na2d_varlen", "na3d_varlen",
           "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D", "set_backend", "get_backend",
           "last_backend", "set_emulation", "emulation_enabled", "set_metal_on_cuda", "metal_on_cuda_enabled",
           "has_mps", "has_metal", "get_support_matrix", "install_as_natten", "uninstall_natten_alias", "tune",
           "__version__"]

# On a Mac, compile the shaders once per process at import; elsewhere nothing is compiled here.
from .metal import runtime as _runtime  # noqa: E402
from .backends import metal as _metal_backend  # noqa: E402
from .backends import metal_split as _metal_split  # noqa: E402

_runtime.precompile([_metal_backend.ATTENTION_SHADER, _metal_split.SPLIT_SHADER])
