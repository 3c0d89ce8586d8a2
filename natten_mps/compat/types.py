"""The type aliases of NATTEN 0.17-0.21's ``natten.types`` (for annotations in client code)."""
from __future__ import annotations

from typing import Tuple, Union

__all__ = ["Dimension1DType", "Dimension2DType", "Dimension3DType", "DimensionType", "Dimension1DTypeOrDed",
           "Dimension2DTypeOrDed", "Dimension3DTypeOrDed", "DimensionTypeOrDed", "CausalArg1DType",
           "CausalArg2DType", "CausalArg3DType", "CausalArgType", "CausalArg1DTypeOrDed", "CausalArg2DTypeOrDed",
           "CausalArg3DTypeOrDed", "CausalArgTypeOrDed"]

Dimension1DType = Tuple[int]
Dimension2DType = Tuple[int, int]
Dimension3DType = Tuple[int, int, int]
DimensionType = Union[Dimension1DType, Dimension2DType, Dimension3DType]
Dimension1DTypeOrDed = Union[int, Dimension1DType]
Dimension2DTypeOrDed = Union[int, Dimension2DType]
Dimension3DTypeOrDed = Union[int, Dimension3DType]
DimensionTypeOrDed = Union[int, DimensionType]
CausalArg1DType = Tuple[bool]
CausalArg2DType = Tuple[bool, bool]
CausalArg3DType = Tuple[bool, bool, bool]
CausalArgType = Union[CausalArg1DType, CausalArg2DType, CausalArg3DType]
CausalArg1DTypeOrDed = Union[bool, CausalArg1DType]
CausalArg2DTypeOrDed = Union[bool, CausalArg2DType]
CausalArg3DTypeOrDed = Union[bool, CausalArg3DType]
CausalArgTypeOrDed = Union[bool, CausalArgType]
