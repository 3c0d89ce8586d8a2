"""``natten_mps.support_matrix.get_support_matrix``, where natten-mps 0.3.3 has it (see :mod:`.support`)."""
from .support import get_support_matrix

__all__ = ["get_support_matrix"]
