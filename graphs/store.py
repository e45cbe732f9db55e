"""Store of static per-image graph data, looked up by an integer id.

Observations carry only an image id (a float32 that holds integers exactly up to 2**24),
never the graph itself: node features and edges are the same at every step of every
episode on an image, so copying them into every observation (and twice into every
replay-buffer transition) would waste memory. Environments register each image's graph
in a store once; the Q-network is given the store (``policy_kwargs["graph_store"]``) and
looks graphs up by id. Ids are derived from a content key (segmenter + image + graph
parameters), so re-registering the same image returns the same id.

:data:`GRAPH_STORE` is the store that :class:`~ppd.envs.world.PromptWorld` registers in
and that a Q-network uses when it is given none (a network loaded from a file).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:  # torch_geometric is imported by whoever builds the graphs
    from torch_geometric.data import Data

MAX_ID = 2**24  # float32 represents every integer below this exactly

T = TypeVar("T")


class GraphStore:
    """Maps integer ids <-> content keys -> torch_geometric ``Data``.

    A store is shared, never copied: ``copy.deepcopy`` returns the store itself (a
    network deep-copied with its store keeps looking graphs up in the same one).
    """

    def __init__(self) -> None:
        self._by_key: dict[str, int] = {}
        self._graphs: list[Data] = []
        self._keys: list[str] = []
        self._derived: dict[tuple[int, str], Any] = {}
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
            self._keys.append(key)
            self._by_key[key] = gid
            return gid

    def id_of(self, key: str) -> int | None:
        return self._by_key.get(key)

    def key_of(self, gid: int) -> str | None:
        """The content key graph ``gid`` was registered under (None: no such id). Ids
        are registration order, so they differ between processes; keys do not: a file
        that names graphs by id (a saved replay buffer) records their keys too, so that
        another process can map its ids onto its own."""
        gid = int(gid)
        return self._keys[gid] if 0 <= gid < len(self._keys) else None

    def get(self, gid: int) -> Data:
        try:
            return self._graphs[int(gid)]
        except IndexError:
            raise KeyError(
                f"graph id {gid} is not registered in this store; graphs are registered "
                "by the environment (or PromptDefender) that encodes the image"
            ) from None

    def derived(self, gid: int, kind: str, build: Callable[[Data], T]) -> T:
        """``build(graph)`` of graph ``gid``, built once per ``kind`` and kept as long as
        the store (graphs are never removed either). The Q-network keeps its device
        tensors of each graph here (``kind`` names the device), so that the online and
        target networks of every agent on this store share one copy."""
        key = (int(gid), kind)
        value = self._derived.get(key)
        if value is None:
            value = build(self.get(gid))
            with self._lock:
                value = self._derived.setdefault(key, value)
        return value

    def __len__(self) -> int:
        return len(self._graphs)

    def __deepcopy__(self, memo: dict) -> GraphStore:
        return self


#: The store shared by environments, Q-networks and PromptDefender in this process.
GRAPH_STORE = GraphStore()
