"""Dual-space patch graph over a SAM2 image embedding.

The PPD paper builds a graph whose nodes are image patches and whose edges carry two
distances: the physical distance between patch centres and the semantic distance between
patch features. It reports dense pairwise matrices; the
default here is the scalable sparse form, the union of a k-NN graph in each space, and
``dense=True`` gives the paper's all-pairs form.

Conventions (shared by every function in this module):

* A ``G x G`` grid of patches covers the whole image. SAM2 resizes the image to a square
  before encoding (no padding), so embedding cell (r, c) covers the same fraction of the
  image in both axes whatever its aspect ratio.
* Node ``i`` is the row-major patch: row ``r = i // G``, column ``c = i % G``.
* Positions are normalised (x, y) in [0, 1]: ``pos[i] = ((c + 0.5) / G, (r + 0.5) / G)``.
* Pixel coordinates follow SAM (and :mod:`ppd.prompts`): (x, y) with x along columns,
  0 at the left / top edge of the image, which spans ``[0, W] x [0, H]``. Patch ``c``
  covers ``x`` in ``[c * W / G, (c + 1) * W / G)``; the right / bottom edge belongs to
  the last patch.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Union

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

if TYPE_CHECKING:
    from ppd.segmenter import ImageEmbedding

__all__ = [
    "EDGE_PHYSICAL",
    "EDGE_SEMANTIC",
    "EDGE_BOTH",
    "build_dual_space_graph",
    "patch_centres",
    "patch_index",
    "patch_mean",
    "to_networkx",
]

#: ``edge_type`` values: the pair is a physical k-NN pair only, a semantic one only, or both.
EDGE_PHYSICAL = 0
EDGE_SEMANTIC = 1
EDGE_BOTH = 2

_SQRT2 = math.sqrt(2.0)


def build_dual_space_graph(
    embedding: Union[ImageEmbedding, torch.Tensor],
    grid: int | None = None,
    k_physical: int = 8,
    k_semantic: int = 8,
    dense: bool = False,
    max_grid: int = 32,
) -> Data:
    """Patch graph with physical and semantic edges over an image embedding.

    The embedding is average-pooled (``adaptive_avg_pool2d``) to a ``G x G`` grid; each
    cell is a node whose features are the pooled embedding channels.

    Edges (sparse form): node ``i`` is joined to its ``k_physical`` nearest nodes by
    Euclidean distance between ``pos`` and to its ``k_semantic`` nearest nodes by cosine
    distance ``1 - cos_sim`` between features (in [0, 2]; a zero feature vector has cosine
    similarity 0, so distance 1, to everything). The union is symmetrised: if ``j`` is
    among ``i``'s neighbours in a space, both ``(i, j)`` and ``(j, i)`` are edges of that
    space. No self loops. A ``k`` of at least ``N - 1`` takes all other nodes; ``k = 0``
    gives no edges of that space.

    Ties in k-NN: among equally distant candidates the lower node index wins (a stable
    sort on the distance). Physical distances are ranked on the exact integer squared
    grid distance ``dr**2 + dc**2``, so equal geometric distances are exact ties; semantic
    ties are exact float32 equality of the computed cosine distances.

    Args:
        embedding: an ``ImageEmbedding`` (its ``image_embed``, (1, C, h, w), is used) or
            a tensor of shape (C, h, w) or (1, C, h, w). The grid must be square.
        grid: side ``G`` of the patch grid, ``1 <= G <= h``; default ``min(h, max_grid)``
            (a 64 x 64 SAM2 grid gives 32 x 32, the bundled model's 16 x 16 stays).
            An explicit ``grid`` is used as given (``max_grid`` does not apply).
        k_physical: number of nearest neighbours in image space (>= 0).
        k_semantic: number of nearest neighbours in feature space (>= 0).
        dense: if True, every ordered pair ``i != j`` is an edge (the paper's form), all
            of type ``EDGE_BOTH``; the ``k_*`` arguments are ignored.
        max_grid: largest default ``G`` (>= 1).

    Returns:
        ``torch_geometric.data.Data`` on the embedding's device, with N = G * G and E edges:

        * ``x``: (N, C) float32 pooled features (detached);
        * ``pos``: (N, 2) float32 normalised patch centres (x, y) in (0, 1);
        * ``edge_index``: (2, E) int64, row 0 source, row 1 target (torch_geometric's
          ``source_to_target``), sorted by source then target, no duplicates, symmetric;
        * ``edge_type``: (E,) int64, ``EDGE_PHYSICAL`` (0), ``EDGE_SEMANTIC`` (1) or
          ``EDGE_BOTH`` (2); the same for ``(i, j)`` and ``(j, i)``;
        * ``edge_attr``: (E, 2) float32 ``[physical distance / sqrt(2), cosine distance
          / 2]``, both in [0, 1], computed for every edge whatever its type;
        * ``grid``: ``G`` (int); ``num_nodes``: N.

        The physical k-NN part depends on ``(G, k_physical)`` only and is cached.

    Raises:
        ValueError: for an embedding of the wrong shape or with non-finite values, a
            non-square grid, ``grid`` outside ``[1, h]``, negative ``k``, or ``max_grid < 1``.
    """
    feats = _embedding_tensor(embedding)  # (C, h, w)
    h = feats.shape[-1]
    if grid is None:
        max_grid = _check_int(max_grid, "max_grid", lo=1)
        G = min(h, max_grid)
    else:
        G = _check_int(grid, "grid", lo=1)
        if G > h:
            raise ValueError(f"grid must be at most the embedding grid size {h}, got {G}")
    k_physical = _check_int(k_physical, "k_physical", lo=0)
    k_semantic = _check_int(k_semantic, "k_semantic", lo=0)

    device = feats.device
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(feats.float(), G) if G != h else feats.float()
        # (N, C) row-major; a copy, never a view of the caller's embedding.
        x = pooled.reshape(pooled.shape[0], G * G).t().clone(memory_format=torch.contiguous_format)
        N = G * G

        idx = torch.arange(N, device=device)
        rows, cols = idx // G, idx % G
        pos = torch.stack([(cols + 0.5) / G, (rows + 0.5) / G], dim=1).float()

        sem = F.normalize(x, dim=1)
        sem = (sem @ sem.t()).neg_().add_(1.0).clamp_(0.0, 2.0)  # (N, N) cosine distance
        sem.fill_diagonal_(float("inf"))  # no self loops (never read back: no i -> i edge)

        if dense:
            phys_adj = sem_adj = ~torch.eye(N, dtype=torch.bool, device=device)
        else:
            phys_adj = _grid_knn_adjacency(G, k_physical, device)
            sem_adj = _knn_adjacency(sem, k_semantic)

        src, dst = (phys_adj | sem_adj).nonzero(as_tuple=True)  # row-major: sorted by src
        if dense:
            edge_type = torch.full_like(src, EDGE_BOTH)
        else:
            p, s = phys_adj[src, dst], sem_adj[src, dst]
            edge_type = torch.where(p & s, EDGE_BOTH, torch.where(p, EDGE_PHYSICAL, EDGE_SEMANTIC))
        dr = (rows[src] - rows[dst]).float()
        dc = (cols[src] - cols[dst]).float()
        edge_attr = torch.stack([(dr * dr + dc * dc).sqrt() / (G * _SQRT2), sem[src, dst] / 2.0], dim=1)

    data = Data(
        x=x,
        pos=pos,
        edge_index=torch.stack([src, dst]).long(),
        edge_type=edge_type.long(),
        edge_attr=edge_attr.float(),
        num_nodes=N,
    )
    data.grid = G
    return data


def patch_centres(grid: int, height: int, width: int) -> np.ndarray:
    """Pixel coordinates of the patch centres, one valid SAM point per node.

    The centre of patch (r, c) is ``((c + 0.5) * W / G, (r + 0.5) * H / G)``; it is
    returned as the integer pixel index at or below it (``floor``), moved into the patch
    if the floor falls just outside (only possible for patches under 2 pixels wide). So
    the points are integer-valued like those of :mod:`ppd.prompts`, ``mask[y, x]`` is a
    valid lookup, and ``patch_index(patch_centres(G, H, W), G, H, W)`` is ``arange(G*G)``.

    Args:
        grid: side ``G`` of the patch grid, ``1 <= G <= min(height, width)`` (a patch
            must hold at least one pixel).
        height: image height H in pixels.
        width: image width W in pixels.

    Returns:
        (G * G, 2) float32 points (x, y) in pixels, node order (row-major).

    Raises:
        ValueError: for a non-positive size or a grid finer than the image.
    """
    G = _check_int(grid, "grid", lo=1)
    H = _check_int(height, "height", lo=1)
    W = _check_int(width, "width", lo=1)
    if G > min(H, W):
        raise ValueError(f"grid must be at most min(height, width) = {min(H, W)} pixels, got {G}")

    def axis(size: int) -> np.ndarray:
        c = np.arange(G)
        # Exact integer arithmetic: floor((c + 0.5) * size / G) = floor((2c + 1) * size / 2G).
        centre = ((2 * c + 1) * size) // (2 * G)
        first = -((-c * size) // G)  # ceil(c * size / G): first pixel index inside patch c
        last = -((-(c + 1) * size) // G) - 1  # last pixel index inside patch c
        return np.clip(centre, first, last)

    xs, ys = axis(W), axis(H)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)


def patch_index(point_coords: np.ndarray, grid: int, height: int, width: int) -> np.ndarray:
    """Node index of the patch holding each point.

    Args:
        point_coords: (K, 2) (or (2,) for one point) points (x, y) in pixels, within
            ``[0, W] x [0, H]``. A point on the right / bottom edge goes to the last patch.
        grid: side ``G`` of the patch grid (>= 1).
        height: image height H in pixels.
        width: image width W in pixels.

    Returns:
        (K,) int64 node indices ``r * G + c`` with ``c = min(floor(x * G / W), G - 1)``
        and ``r`` likewise from y.

    Raises:
        ValueError: for a wrong shape, a non-finite point or one outside the image.
    """
    G = _check_int(grid, "grid", lo=1)
    H = _check_int(height, "height", lo=1)
    W = _check_int(width, "width", lo=1)
    pts = np.asarray(point_coords, dtype=np.float64)
    if pts.shape == (2,):
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"point_coords must have shape (K, 2) (x, y), got {np.shape(point_coords)}")
    xs, ys = pts[:, 0], pts[:, 1]
    bad = ~(np.isfinite(xs) & np.isfinite(ys)) | (xs < 0) | (xs > W) | (ys < 0) | (ys > H)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"point_coords[{i}] = ({xs[i]}, {ys[i]}) is outside the image of width {W} "
            f"and height {H} (expected 0 <= x <= {W}, 0 <= y <= {H})"
        )
    c = np.minimum(np.floor(xs * G / W), G - 1).astype(np.int64)
    r = np.minimum(np.floor(ys * G / H), G - 1).astype(np.int64)
    return r * G + c


def patch_mean(pixel_map: np.ndarray, grid: int) -> np.ndarray:
    """Mean of a pixel map over each patch of the graph grid: per-node values.

    The pooling is ``adaptive_avg_pool2d`` to ``G x G``, the one used for the node
    features, so node ``i`` (row-major) gets the mean of the pixels its patch covers
    (adaptive pooling widens a bin by a pixel where ``H`` or ``W`` is not a multiple of
    ``G``). Used for the per-step node inputs of :mod:`ppd.envs`: the mask coverage (a
    bool mask) and the segmenter's pixel uncertainty (the RUAC decoder).

    Args:
        pixel_map: (H, W) map at image size (bool or float), or (B, H, W) maps.
        grid: side ``G`` of the patch grid, ``1 <= G <= min(H, W)``.

    Returns:
        (G * G,) float32 patch means ((B, G * G) for a batch), in node order.
    """
    G = _check_int(grid, "grid", lo=1)
    arr = np.asarray(pixel_map)
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < G:
        raise ValueError(f"pixel_map must be (H, W) or (B, H, W) with H, W >= grid = {G}, got {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    pooled = F.adaptive_avg_pool2d(t[None] if arr.ndim == 2 else t[:, None], G)
    return pooled.reshape(*arr.shape[:-2], G * G).numpy()


def to_networkx(data: Data) -> nx.Graph:
    """Undirected networkx view of a graph from :func:`build_dual_space_graph`.

    Nodes ``0 .. N-1`` carry ``pos`` ([x, y] normalised); each undirected edge carries
    ``type`` (0 physical, 1 semantic, 2 both), ``physical`` and ``semantic`` (the two
    ``edge_attr`` columns). The graph attribute ``grid`` is G. Meant for inspection and
    plotting, not for the training loop.
    """
    from torch_geometric.utils import to_networkx as _pyg_to_networkx

    for name in ("edge_index", "edge_type", "edge_attr", "pos"):
        if getattr(data, name, None) is None:
            raise ValueError(f"data has no {name!r}; expected a graph from build_dual_space_graph")
    view = Data(
        edge_index=data.edge_index.cpu(),
        num_nodes=data.num_nodes,
        pos=data.pos.cpu(),
        type=data.edge_type.cpu(),
        physical=data.edge_attr[:, 0].cpu(),
        semantic=data.edge_attr[:, 1].cpu(),
    )
    graph_attrs = []
    if getattr(data, "grid", None) is not None:
        view.grid = int(data.grid)
        graph_attrs.append("grid")
    return _pyg_to_networkx(
        view,
        node_attrs=["pos"],
        edge_attrs=["type", "physical", "semantic"],
        graph_attrs=graph_attrs,
        to_undirected=True,  # edges are symmetric: keeps each (i < j) pair once
    )


@functools.lru_cache(maxsize=16)
def _grid_knn_adjacency(G: int, k: int, device: torch.device) -> torch.Tensor:
    """Symmetric physical k-NN adjacency of a G x G grid (cached: it depends on G and k
    only; callers must not modify it). Ranked on the exact integer squared grid distance
    ``dr**2 + dc**2``, so equal geometric distances tie exactly (lower index wins)."""
    idx = torch.arange(G * G, device=device)
    rows, cols = idx // G, idx % G
    dr = rows[:, None] - rows[None, :]
    dc = cols[:, None] - cols[None, :]
    d2 = dr * dr + dc * dc
    d2.fill_diagonal_(torch.iinfo(d2.dtype).max)
    return _knn_adjacency(d2, k)


def _knn_adjacency(dist: torch.Tensor, k: int) -> torch.Tensor:
    """(N, N) symmetric bool adjacency of the k-NN graph of a distance matrix whose
    diagonal is already set to the dtype's maximum (or inf). Ties: lower index first.

    ``topk`` finds the k-th smallest distance of each row; every node strictly closer is
    a neighbour, and the remaining places go to the nodes at exactly that distance in
    index order: the same result as a stable sort, at the cost of a ``topk``.
    """
    N = dist.shape[0]
    k = min(k, N - 1)
    if k <= 0:
        return torch.zeros(N, N, dtype=torch.bool, device=dist.device)
    kth = dist.topk(k, dim=1, largest=False, sorted=True).values[:, -1:]  # (N, 1)
    adj = dist <= kth
    over = adj.sum(dim=1) > k  # rows with more than k candidates: ties at the k-th distance
    if over.any():
        rows = over.nonzero(as_tuple=True)[0]
        d, t = dist[rows], kth[rows]
        closer = d < t
        at_kth = d == t
        room = k - closer.sum(dim=1, keepdim=True)  # >= 1 places left for the ties
        adj[rows] = closer | (at_kth & (at_kth.cumsum(dim=1) <= room))
    return adj | adj.t()


def _embedding_tensor(embedding: Any) -> torch.Tensor:
    """The (C, h, w) feature tensor of an ``ImageEmbedding`` or a tensor, checked."""
    t = getattr(embedding, "image_embed", embedding)
    name = "embedding.image_embed" if t is not embedding else "embedding"
    if not isinstance(t, torch.Tensor):
        raise ValueError(
            f"embedding must be an ImageEmbedding or a torch.Tensor, got {type(embedding).__name__}"
        )
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"{name} must have shape (C, h, w) or (1, C, h, w), got {tuple(t.shape)}")
    if t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{name} must be a square grid (h == w), got h={t.shape[-2]}, w={t.shape[-1]}")
    if t.shape[0] < 1 or t.shape[-1] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    t = t.detach()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be at least {lo}, got {value}")
    return int(value)
