"""The graph tensors of the Q-network: each graph's row-normalised adjacency in CSR form
on a device, a batch's block-diagonal adjacency, and the sparse neighbour mean.

Built once per (graph, device) from a :class:`~ppd.graphs.store.GraphStore` and kept in
that store (:meth:`~ppd.graphs.store.GraphStore.derived`), so the online and target
networks of both agents share one device copy of each graph.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ppd.graphs.dual_space import EDGE_PHYSICAL, EDGE_SEMANTIC
from ppd.graphs.store import GRAPH_STORE, GraphStore

__all__ = ["GraphTensors", "SparseMean", "batched_adjacency", "block_diagonal", "graph_tensors"]


class GraphTensors:
    """Static tensors of one registered graph on one device.

    ``adj`` = (crow, cols, vals), the CSR form of the (2N x N) row-normalised adjacency of
    the two relations stacked: row ``i`` (physical) and row ``N + i`` (semantic) hold
    ``1 / deg`` for each neighbour of node i in that relation (edges of type "both"
    count in both). ``A @ h`` is then the mean over each relation's neighbours, PyG
    ``SAGEConv``'s ``aggr="mean"`` (a node without neighbours gets 0). ``adj_t`` is the
    transpose (N x 2N), for the backward pass.
    """

    __slots__ = ("x", "pos", "adj", "adj_t")

    def __init__(self, g, device: torch.device) -> None:
        """``g``: a registered graph (torch_geometric ``Data`` with ``x``, ``pos``,
        ``edge_index`` and ``edge_type``)."""
        n = int(g.num_nodes)
        self.x = g.x.to(device=device, dtype=torch.float32)
        self.pos = g.pos.to(device=device, dtype=torch.float32)
        et, ei = g.edge_type.cpu(), g.edge_index.cpu()
        rows, cols, vals = [], [], []
        for r, keep in enumerate((et != EDGE_SEMANTIC, et != EDGE_PHYSICAL)):
            src, dst = ei[0, keep], ei[1, keep]
            deg = torch.bincount(src, minlength=n).clamp(min=1).float()
            rows.append(src + r * n)
            cols.append(dst)
            vals.append(1.0 / deg[src])
        rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        self.adj = _csr(rows, cols, vals, 2 * n, n, device)
        self.adj_t = _csr(cols, rows, vals, n, 2 * n, device)


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int, n_cols: int, device) -> tuple:
    """(crow (n_rows + 1,), cols, vals) of COO entries, sorted by row then column."""
    order = torch.argsort(rows * n_cols + cols)
    crow = torch.zeros(n_rows + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow.to(device), cols[order].to(device), vals[order].to(device)


def graph_tensors(gid: int, device: torch.device, store: GraphStore | None = None) -> GraphTensors:
    """The :class:`GraphTensors` of graph ``gid`` of ``store`` (default
    :data:`~ppd.graphs.store.GRAPH_STORE`) on ``device``, built on first use and kept in
    the store."""
    store = GRAPH_STORE if store is None else store
    return store.derived(gid, f"qnet-tensors:{device}", lambda g: GraphTensors(g, device))


def block_diagonal(parts: list[tuple], inv: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Sparse CSR block-diagonal matrix whose block b is ``parts[inv[b]]`` (crow, cols,
    vals of a ``shape`` CSR matrix).

    Every block is padded to the same number of entries E with explicit zeros at the
    start of its first row (column 0, value 0: they change no product), so the batch is
    built by plain 2-D gathers, with no loop over the batch.
    """
    device, B = inv.device, inv.numel()
    E = max(int(p[1].numel()) for p in parts)
    cols_u, vals_u, crow_u = [], [], []
    for crow, cols, vals in parts:
        pad = E - int(cols.numel())
        cols_u.append(nn.functional.pad(cols, (pad, 0)))
        vals_u.append(nn.functional.pad(vals, (pad, 0)))
        crow = crow + pad
        crow[0] = 0
        crow_u.append(crow)
    block = torch.arange(B, device=device)[:, None]
    cols = (torch.stack(cols_u)[inv] + block * shape[1]).reshape(-1)
    vals = torch.stack(vals_u)[inv].reshape(-1)
    crow = torch.cat([(torch.stack(crow_u)[inv][:, :-1] + block * E).reshape(-1), torch.tensor([B * E], device=device)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, vals, (B * shape[0], B * shape[1]), check_invariants=False)


def batched_adjacency(graphs: list[GraphTensors], inv: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-diagonal CSR adjacency ``(B 2N, B N)`` of a batch, and its transpose.

    Element b is graph ``graphs[inv[b]]``: its nodes are columns ``b N .. (b + 1) N - 1``
    and its two relations rows ``2 b N .. 2 (b + 1) N - 1``.
    """
    n = num_nodes
    return (
        block_diagonal([g.adj for g in graphs], inv, (2 * n, n)),
        block_diagonal([g.adj_t for g in graphs], inv, (n, 2 * n)),
    )


class SparseMean(torch.autograd.Function):
    """``adj @ h`` whose backward uses the precomputed ``adj_t`` (torch would transpose
    the CSR matrix, a sort, on every backward: measured 6x the forward's cost)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj_t = adj_t
        return adj @ h

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, None, ctx.adj_t @ grad
