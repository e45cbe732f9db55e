"""Process-wide store of static per-image graph data, looked up by an integer id.

Observations carry only an image id (a float32 that holds integers exactly up to 2**24),
never the graph itself: node features and edges are the same at every step of every
episode on an image, so copying them into every observation (and twice into every
replay-buffer transition) would waste memory. Environments register each image's graph
here once; the Q-network looks graphs up by id. Ids are derived from a content key
(segmenter + image + graph parameters), so re-registering the same image returns the
same id.
"""

from __future__ import annotations

import threading

from torch_geometric.data import Data

MAX_ID = 2**24  # float32 represents every integer below this exactly


class GraphStore:
    """Maps integer ids <-> content keys -> torch_geometric ``Data``."""

    def __init__(self) -> None:
        self._by_key: dict[str, int] = {}
        self._graphs: list[Data] = []
        self._lock = threading.Lock()

    def register(self, key: str, graph: Data) -> int:
        """Store ``graph`` under ``key`` (first registration wins); return its id."""
        with self._lock:
            gid = self._by_key.get(key)
            if gid is not None:
                return gid
            if len(self._graphs) >= MAX_ID:
                raise RuntimeError("graph store is full (2**24 graphs)")
            gid = len(self._graphs)
            self._graphs.append(graph)
            self._by_key[key] = gid
            return gid

    def id_of(self, key: str) -> int | None:
        return self._by_key.get(key)

    def get(self, gid: int) -> Data:
        try:
            return self._graphs[int(gid)]
        except IndexError:
            raise KeyError(
                f"graph id {gid} is not registered in this process; graphs are registered "
                "by the environment (or PromptDefender) that encodes the image"
            ) from None

    def __len__(self) -> int:
        return len(self._graphs)


#: The store shared by environments, Q-networks and PromptDefender in this process.
GRAPH_STORE = GraphStore()
