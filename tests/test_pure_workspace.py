"""The pure path's per-thread kept buffers: reused across calls, never aliased by outputs, private
to each thread, and bounded."""
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
        kept = [b for entry, _ in workspace._local.cache.values() for b in (entry.keys, entry.values)]
        assert kept, "the pure path kept no buffer"
        storages = {b.untyped_storage().data_ptr() for b in kept}
        for t in again:
            assert t.untyped_storage().data_ptr() not in storages


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


def test_kept_objects_are_bounded_and_large_ones_not_kept():
    workspace.release()
    builds = []

    def build(tag):
        builds.append(tag)
        return tag

    assert workspace.kept("big", lambda: workspace.MAX_BYTES + 1, lambda: build("big")) == "big"
    assert workspace.kept("big", lambda: workspace.MAX_BYTES + 1, lambda: build("big")) == "big"
    assert builds == ["big", "big"] and workspace.kept_count() == 0       # built each call, not kept
    size = workspace.BUDGET // 3
    for tag in ("a", "b", "c"):
        workspace.kept(tag, lambda: size, lambda tag=tag: build(tag))
    workspace.kept("a", lambda: size, lambda: build("a-again"))                   # a hit: "a" becomes most recent
    workspace.kept("d", lambda: size, lambda: build("d"))                         # over budget: drops "b", the oldest
    assert workspace.kept_count() == 3
    workspace.kept("b", lambda: size, lambda: build("b-again"))
    assert builds[-2:] == ["d", "b-again"] and "a-again" not in builds
    workspace.release()
    assert workspace.kept_count() == 0


def test_alternating_signatures_reuse_their_own_buffers():
    """Two signatures with different padding alternate on one thread: each call must give exactly
    the values of the first call of its signature (buffers are refilled, never mixed up)."""
    natten_mps.set_backend("pure")
    workspace.release()
    a = _inputs(3, (2, 30, 2, 8))
    b = _inputs(4, (1, 45, 2, 8))
    first = [_run(natten_mps.na1d, a, 7), _run(natten_mps.na1d, b, 9)]
    for _ in range(2):
        for (t, k), ref in zip(((a, 7), (b, 9)), first):
            for x in t:
                x.grad = None
            got = _run(natten_mps.na1d, t, k)
            assert all(torch.equal(x, y) for x, y in zip(got, ref))


def test_clear_caches_forgets_setups():
    from natten_mps.backends import pure
    natten_mps.set_backend("pure")
    _run(natten_mps.na1d, _inputs(5, (1, 20, 1, 8)), 5)
    assert pure._SETUPS
    pure.clear_caches()
    assert not pure._SETUPS
    again = _run(natten_mps.na1d, _inputs(5, (1, 20, 1, 8)), 5)
    assert all(torch.isfinite(t).all() for t in again)
