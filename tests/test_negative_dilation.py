"""A negative (or zero) dilation is refused by every public op that takes one: a ValueError naming
the argument and the value, before any kernel runs (on the pure path and on the Metal path)."""
import inspect

import pytest
import torch

import natten_mps

SPATIAL = {1: (12,), 2: (6, 6), 3: (4, 4, 4)}


def _bad(rank, value):
    return (value,) * rank


def _calls(rank, dil):
    q = torch.randn(1, *SPATIAL[rank], 2, 8)
    w = torch.randn(1, *SPATIAL[rank], 2, 3 ** rank)
    seq = torch.tensor([SPATIAL[rank]] if rank > 1 else [12])
    n = f"na{rank}d"
    return {
        n: lambda: getattr(natten_mps, n)(q, q, q, 3, dilation=dil),
        f"{n}_qk": lambda: getattr(natten_mps, f"{n}_qk")(q, q, 3, dil),
        f"{n}_av": lambda: getattr(natten_mps, f"{n}_av")(w, q, 3, dil),
        f"{n}_varlen": lambda: getattr(natten_mps, f"{n}_varlen")(q, q, q, seq, 3, dil),
        f"NeighborhoodAttention{rank}D": lambda: getattr(natten_mps, f"NeighborhoodAttention{rank}D")(
            16, 2, 3, dilation=dil)(torch.randn(1, *SPATIAL[rank], 16)),
    }


def test_every_public_op_with_a_dilation_is_covered():
    """The list above holds every public callable of natten_mps that takes ``dilation``."""
    takes = {name for name in natten_mps.__all__
             if callable(getattr(natten_mps, name)) and "dilation" in _params(getattr(natten_mps, name))}
    covered = set()
    for rank in (1, 2, 3):
        covered |= set(_calls(rank, _bad(rank, 1)))
    assert takes <= covered, takes - covered


def _params(obj):
    try:
        return inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
    except (TypeError, ValueError):
        return {}


@pytest.mark.parametrize("path", ["pure", "metal"])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("value", [-1, 0])
def test_non_positive_dilation_is_refused(path, rank, value):
    natten_mps.set_emulation(path == "metal")
    for name, call in _calls(rank, _bad(rank, value)).items():
        with pytest.raises(ValueError, match=r"dilation must be >= 1, got dilation=") as info:
            call()
        assert str(value) in str(info.value), (name, str(info.value))
