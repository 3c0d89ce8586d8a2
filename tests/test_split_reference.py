"""Split ops (na*d_qk / na*d_av) against the independent slot reference (tests/reference.py): neighbour
order, masked slots, GQA; on the pure path and on the Metal path (emulator)."""
import random

import pytest
import torch

import natten_mps
from conftest import TOL
from reference import neighborhood_mask, neighborhood_slots, reference_split_av, reference_split_qk


def _case(rank, i):
    rng = random.Random(500 * rank + i)
    spatial = {1: (11,), 2: (6, 7), 3: (4, 5, 4)}[rank]
    ks = tuple(rng.choice([2, 3]) for _ in spatial)
    dil = tuple(rng.choice([1, 2]) if k * 2 <= n else 1 for k, n in zip(ks, spatial))
    st = tuple(rng.randint(1, k) for k in ks)
    causal = tuple(rng.random() < 0.5 for _ in spatial)
    return spatial, ks, st, dil, causal


def test_slot_reference_agrees_with_the_mask_reference():
    """The two halves of the reference agree: a query's valid slots are exactly its window's keys."""
    for rank in (1, 2, 3):
        for i in range(4):
            spatial, ks, st, dil, causal = _case(rank, i)
            slots = neighborhood_slots(spatial, ks, st, dil, causal)
            mask = neighborhood_mask(spatial, ks, st, dil, causal)
            for t in range(slots.shape[0]):
                held = sorted(int(j) for j in slots[t] if j >= 0)
                assert held == torch.nonzero(mask[t]).flatten().tolist()


@pytest.mark.parametrize("path", ["pure", "metal"])
@pytest.mark.parametrize("rank,i", [(r, i) for r in (1, 2, 3) for i in range(2)])
def test_split_ops_match_the_slot_reference(path, rank, i):
    spatial, ks, st, dil, causal = _case(rank, i)
    if path == "metal":
        natten_mps.set_emulation(True)
    else:
        natten_mps.set_backend("pure")
    g = torch.Generator().manual_seed(i)
    q = torch.randn(2, *spatial, 4, 8, generator=g)
    k = torch.randn(2, *spatial, 2, 8, generator=g)
    v = torch.randn(2, *spatial, 2, 5, generator=g)
    qk, av = getattr(natten_mps, f"na{rank}d_qk"), getattr(natten_mps, f"na{rank}d_av")
    logits = qk(q, k, ks, dil, stride=st, is_causal=causal)
    assert natten_mps.last_backend() == path
    want = reference_split_qk(q, k, ks, st, dil, causal)
    assert torch.equal(torch.isinf(logits), torch.isinf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(logits.double()[finite], want[finite], atol=TOL[torch.float32], rtol=TOL[torch.float32])
    w = torch.randn(logits.shape, generator=g)
    out = av(w, v, ks, dil, stride=st, is_causal=causal)
    torch.testing.assert_close(out.double(), reference_split_av(w, v, ks, st, dil, causal),
                               atol=TOL[torch.float32], rtol=TOL[torch.float32])
