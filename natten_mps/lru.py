"""A bounded least-recently-used map, for everything the package keeps per call signature (checked
arguments, tiling problems, masks). A leaf module: it imports nothing of this package."""
from __future__ import annotations

from collections import OrderedDict


class SignatureCache:
    """A bounded map from call signatures to checked results (least recently used first out)."""

    def __init__(self, size: int = 256) -> None:
        self.size, self._entries = size, OrderedDict()

    def get(self, key):
        """The entry of ``key``, or None (also for an unhashable key, which :meth:`put` skips)."""
        try:
            entry = self._entries.get(key)
        except TypeError:
            return None
        if entry is not None:
            try:
                self._entries.move_to_end(key)
            except KeyError:      # evicted by another thread meanwhile: the entry is still valid
                pass
        return entry

    def put(self, key, value) -> None:
        try:
            self._entries[key] = value
        except TypeError:         # unhashable (a list inside a window argument): not kept
            return
        while len(self._entries) > self.size:
            try:
                self._entries.popitem(last=False)
            except KeyError:
                break

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
