"""Stand-in for allin1/config.py (see ../ORIGIN.md): the original builds a hydra ConfigStore; the
DiNAT layers read only these fields, given here with the original defaults."""
from dataclasses import dataclass


@dataclass
class Config:
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_hidden: float = 0.2
  drop_attention: float = 0.2
  act_transformer: str = 'gelu'
  layer_norm_eps: float = 1e-5
