"""Distance maps of ground-truth masks, the geometry the prompt generators place points by.

:func:`inner_distance` gives each object pixel its distance to the nearest background
pixel or the image border, :func:`outer_distance` each pixel its distance to the object.
:data:`GT_DISTANCES` keeps the maps of the last masks seen (:class:`DistanceCache`), so
that prompting the same objects again does not repeat the transforms.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from scipy import ndimage

__all__ = ["GT_DISTANCES", "DistanceCache", "inner_distance", "outer_distance"]


def inner_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) distance of each mask pixel to the nearest non-mask pixel or the image
    border (1 next to the boundary); 0 outside the mask."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def outer_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) distance of each pixel to the nearest mask pixel; 0 on the mask."""
    return ndimage.distance_transform_edt(~mask)


class DistanceCache:
    """The distance maps of the last ground-truth masks seen, read-only, at most
    ``max_bytes`` in all.

    The same objects are prompted again and again (every env episode draws coarse or
    ideal prompts for an object of a small scene set), and the two distance transforms
    are most of the cost of drawing them (about 2 ms of 2.5 per coarse set at 256 px).
    Keyed by the mask's shape and a hash of its packed bits; a hand-written LRU because
    ``functools.lru_cache`` cannot key on arrays or bound the bytes held.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, mask: np.ndarray) -> np.ndarray:
        key = (kind, mask.shape, hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest())
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = (inner_distance if kind == "inner" else outer_distance)(mask)
        value.flags.writeable = False
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self.bytes += value.nbytes
            while self.bytes > self.max_bytes and len(self._items) > 1:
                self.bytes -= self._items.popitem(last=False)[1].nbytes
        return value


#: The process's cache of ground-truth distance maps, shared by the prompt generators.
GT_DISTANCES = DistanceCache()
