"""``natten_mps.merge.merge_attentions``, where natten-mps 0.3.3 exports it (same function as
``natten_mps.merge_attentions``)."""
from .functional import merge_attentions

__all__ = ["merge_attentions"]
