"""Per-thread buffers that the pure path keeps from call to call (CPU only).

The padded key/value buffers and gathered key windows live only inside one op call. Allocating
them fresh every call makes the allocator hand memory back to the OS and fault it in again on
first touch, which on a small problem costs as much as the attention itself (measured on the
2-core CI machine: 1-D L=256 forward+backward ~1.6x slower with fresh buffers). Building their
views (margins, interiors, windows) costs a few microseconds per tensor op as well.

So each thread keeps, per problem signature, one object holding those buffers and their views
(:func:`kept`): a call then only copies its keys and values in. The most recently used signatures
are kept up to ``BUDGET`` bytes per thread; an object above ``MAX_BYTES`` is built afresh on every
call and not kept. Other devices have caching allocators; callers build afresh there.

Nothing kept here may escape the call that used it (no output is a view of a kept buffer), and no
call may use the same signature's object twice at once (the pure path never nests its calls).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

MAX_BYTES = 64 << 20
BUDGET = 128 << 20
_local = threading.local()

T = TypeVar("T")


def kept(key: Hashable, nbytes: Callable[[], int], build: Callable[[], T]) -> T:
    """This thread's object for ``key``, made by ``build()`` on first use and kept while it is among
    the most recently used within ``BUDGET``. ``nbytes()``: the bytes of buffers it will hold (asked
    on a miss only)."""
    cache = _local.__dict__.get("cache")
    if cache is None:
        cache = _local.cache = OrderedDict()
        _local.nbytes = 0
    entry = cache.get(key)
    if entry is not None:
        cache.move_to_end(key)
        return entry[0]
    size = nbytes()
    if size > MAX_BYTES:
        return build()
    value = build()
    cache[key] = (value, size)
    _local.nbytes += size
    while _local.nbytes > BUDGET:
        _, (_, dropped) = cache.popitem(last=False)
        _local.nbytes -= dropped
    return value


def kept_count() -> int:
    """How many objects this thread keeps."""
    return len(_local.__dict__.get("cache", ()))


def release() -> None:
    """Drop this thread's buffers."""
    _local.__dict__.pop("cache", None)
    _local.nbytes = 0
