"""The pure path's per-thread scratch buffers: reused across calls, never aliased by outputs, and
private to each thread."""
import threading

import torch

import natten_mps
from natten_mps.backends import workspace


def _inputs(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, requires_grad=True) for _ in range(3)]


def _run(fn, tensors, kernel):
    out = fn(*tensors, kernel)
    out.square().sum().backward()
    return [out.detach()] + [t.grad for t in tensors]


def test_reuse_gives_identical_results_and_outputs_never_alias_a_slot():
    natten_mps.set_backend("pure")
    for fn, shape, kernel in ((natten_mps.na1d, (2, 40, 2, 8), 5), (natten_mps.na2d, (1, 9, 11, 2, 8), 3),
                              (natten_mps.na3d, (1, 5, 6, 7, 2, 8), 3)):
        workspace.release()
        first = _run(fn, _inputs(1, shape), kernel)
        _run(fn, _inputs(2, shape), kernel)                  # a different problem writes the slots
        again = _run(fn, _inputs(1, shape), kernel)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
        slots = [buf.untyped_storage().data_ptr() for buf in workspace._local.pool.values()]
        assert slots, "the pure path took no workspace buffer"
        for t in again:
            assert t.untyped_storage().data_ptr() not in slots


def test_threads_do_not_share_slots():
    natten_mps.set_backend("pure")
    shape = (2, 64, 2, 8)
    expected = {s: _run(natten_mps.na1d, _inputs(s, shape), 7) for s in range(4)}
    results, errors = {}, []

    def work(seed):
        try:
            for _ in range(20):
                got = _run(natten_mps.na1d, _inputs(seed, shape), 7)
                if not all(torch.equal(a, b) for a, b in zip(got, expected[seed])):
                    results[seed] = False
                    return
            results[seed] = True
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == {s: True for s in range(4)}


def test_large_requests_are_not_kept():
    workspace.release()
    big = workspace.take("x", [workspace.MAX_BYTES // 4 + 1], torch.float32, torch.device("cpu"))
    assert big.numel() == workspace.MAX_BYTES // 4 + 1
    assert not getattr(workspace._local, "pool", {})
    small = workspace.take("x", [10], torch.float32, torch.device("cpu"))
    again = workspace.take("x", [8, 1], torch.float32, torch.device("cpu"))
    assert small.data_ptr() == again.data_ptr() and again.shape == (8, 1)
