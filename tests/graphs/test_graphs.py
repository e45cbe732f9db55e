"""Dual-space patch graph: nodes, features, k-NN edges in both spaces, pixel mapping."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    import ppd.graphs  # noqa: F401  (installed: setup.py maps graphs/ -> ppd.graphs)
except ModuleNotFoundError:  # source tree, not installed: map it the way setup.py does
    _root = Path(__file__).resolve().parents[2] / "graphs"
    _spec = importlib.util.spec_from_file_location(
        "ppd.graphs", _root / "__init__.py", submodule_search_locations=[str(_root)]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["ppd.graphs"] = _module
    _spec.loader.exec_module(_module)

from ppd.graphs import (  # noqa: E402
    EDGE_BOTH,
    EDGE_PHYSICAL,
    EDGE_SEMANTIC,
    build_dual_space_graph,
    patch_centres,
    patch_index,
    to_networkx,
)
from ppd.segmenter import ImageEmbedding  # noqa: E402


def _embed(c: int, h: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, c, h, h, generator=g)


def _pairs(data, types=(EDGE_PHYSICAL, EDGE_SEMANTIC, EDGE_BOTH)) -> set[tuple[int, int]]:
    keep = torch.isin(data.edge_type, torch.tensor(types))
    return set(map(tuple, data.edge_index[:, keep].t().tolist()))


def _neighbours(data, i: int, types) -> set[int]:
    return {j for (s, j) in _pairs(data, types) if s == i}


PHYS = (EDGE_PHYSICAL, EDGE_BOTH)
SEM = (EDGE_SEMANTIC, EDGE_BOTH)


# ----------------------------------------------------------------------------- nodes


def test_nodes_and_pos_native_16_grid():
    data = build_dual_space_graph(_embed(64, 16))
    assert data.grid == 16 and data.num_nodes == 256
    assert data.x.shape == (256, 64) and data.x.dtype == torch.float32
    assert data.pos.shape == (256, 2) and data.pos.dtype == torch.float32
    i = 3 * 16 + 5  # row 3, col 5
    assert data.pos[i].tolist() == pytest.approx([5.5 / 16, 3.5 / 16])
    idx = torch.arange(256)
    expected = torch.stack([(idx % 16 + 0.5) / 16, (idx // 16 + 0.5) / 16], dim=1)
    assert torch.equal(data.pos, expected)


def test_64_grid_pools_to_32_and_x_is_block_mean():
    emb = _embed(8, 64)
    data = build_dual_space_graph(emb, k_physical=4, k_semantic=4)
    assert data.grid == 32 and data.num_nodes == 1024 and data.x.shape == (1024, 8)
    r, c = 7, 20
    direct = emb[0, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean(dim=(1, 2))
    torch.testing.assert_close(data.x[r * 32 + c], direct)
    assert data.pos[r * 32 + c].tolist() == pytest.approx([20.5 / 32, 7.5 / 32])


def test_explicit_grid_matches_adaptive_pool_uneven_bins():
    emb = _embed(6, 16, seed=1)
    data = build_dual_space_graph(emb, grid=5)
    assert data.grid == 5 and data.num_nodes == 25
    torch.testing.assert_close(data.x, F.adaptive_avg_pool2d(emb, 5)[0].reshape(6, 25).t())
    # node (r, c) = (2, 3): adaptive bins are [floor(i*h/G), ceil((i+1)*h/G))
    r0, r1 = math.floor(2 * 16 / 5), math.ceil(3 * 16 / 5)
    c0, c1 = math.floor(3 * 16 / 5), math.ceil(4 * 16 / 5)
    torch.testing.assert_close(data.x[2 * 5 + 3], emb[0, :, r0:r1, c0:c1].mean(dim=(1, 2)))


def test_max_grid_and_input_forms():
    emb = _embed(4, 16)
    assert build_dual_space_graph(emb, max_grid=8).grid == 8
    assert build_dual_space_graph(emb, grid=16, max_grid=8).grid == 16  # explicit wins
    a = build_dual_space_graph(emb)
    b = build_dual_space_graph(emb[0])
    e = ImageEmbedding(image_embed=emb, high_res_feats=[], orig_hw=(96, 128), key="k")
    c = build_dual_space_graph(e)
    for other in (b, c):
        assert torch.equal(a.x, other.x) and torch.equal(a.edge_index, other.edge_index)


def test_x_is_a_copy_not_a_view():
    emb = _embed(4, 8)
    data = build_dual_space_graph(emb)
    data.x.add_(1.0)
    assert torch.equal(emb, _embed(4, 8))


# ----------------------------------------------------------------------------- edges


def test_every_node_has_k_neighbours_of_each_kind():
    k = 6
    data = build_dual_space_graph(_embed(16, 12, seed=2), k_physical=k, k_semantic=k)
    src, types = data.edge_index[0], data.edge_type
    is_phys = (types == EDGE_PHYSICAL) | (types == EDGE_BOTH)
    is_sem = (types == EDGE_SEMANTIC) | (types == EDGE_BOTH)
    n_phys = torch.bincount(src[is_phys], minlength=144)
    n_sem = torch.bincount(src[is_sem], minlength=144)
    assert int(n_phys.min()) >= k and int(n_sem.min()) >= k


def test_interior_physical_neighbours_are_the_8_grid_neighbours():
    G = 16
    data = build_dual_space_graph(_embed(8, G), k_physical=8, k_semantic=3)
    phys = _pairs(data, PHYS)
    # Nodes at least 3 cells from the border: no border node (whose 8-NN reach farther)
    # picks them, so after symmetrisation their physical set is exactly the 3x3 ring.
    for r in range(3, G - 3):
        for c in range(3, G - 3):
            i = r * G + c
            ring = {(r + dr) * G + (c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)} - {i}
            assert {j for (s, j) in phys if s == i} == ring, (r, c)
    # the distances of those 8: four at 1 cell, four at sqrt(2) cells (in edge_attr units)
    i = 8 * G + 8
    m = (data.edge_index[0] == i) & torch.isin(data.edge_type, torch.tensor(PHYS))
    d = sorted((data.edge_attr[m, 0] * math.sqrt(2) * G).tolist())
    assert d == pytest.approx([1] * 4 + [math.sqrt(2)] * 4, abs=1e-5)


def test_physical_ties_go_to_lower_index():
    # 4x4 grid, k=4: node 0 takes 1, 4 (distance 1), 5 (sqrt 2), then one of 2 and 8
    # (both at distance 2): the lower index, 2. Neither 2 nor 8 picks node 0 back.
    data = build_dual_space_graph(_embed(3, 4), k_physical=4, k_semantic=0)
    assert _neighbours(data, 0, PHYS) == {1, 2, 4, 5}
    assert (data.edge_type == EDGE_PHYSICAL).all()


@pytest.mark.parametrize("G,k", [(7, 3), (7, 5), (7, 12), (5, 24), (6, 1)])
def test_physical_knn_matches_brute_force(G, k):
    # integer squared grid distances, many exact ties: stable argsort = lower index first
    r, c = np.divmod(np.arange(G * G), G)
    d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    np.fill_diagonal(d2, np.iinfo(d2.dtype).max)
    pairs = set()
    for i in range(G * G):
        for j in np.argsort(d2[i], kind="stable")[:k]:
            pairs |= {(i, int(j)), (int(j), i)}
    data = build_dual_space_graph(_embed(3, G), k_physical=k, k_semantic=0)
    assert _pairs(data) == pairs


def _brute_semantic_pairs(x: np.ndarray, k: int) -> set[tuple[int, int]]:
    x = x.astype(np.float64)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    dist = 1.0 - xn @ xn.T
    np.fill_diagonal(dist, np.inf)
    pairs = set()
    for i in range(len(x)):
        for j in np.argsort(dist[i], kind="stable")[: min(k, len(x) - 1)]:
            pairs |= {(i, int(j)), (int(j), i)}
    return pairs


@pytest.mark.parametrize("k", [1, 3, 5])
def test_semantic_knn_matches_brute_force(k):
    emb = _embed(5, 6, seed=10 + k)
    data = build_dual_space_graph(emb, k_physical=0, k_semantic=k)
    x = emb[0].reshape(5, 36).t().numpy()
    assert _pairs(data) == _brute_semantic_pairs(x, k)
    assert (data.edge_type == EDGE_SEMANTIC).all()


def test_semantic_ties_go_to_lower_index():
    # One-hot features: cosine distances are exactly 0 (same class) or 1, so ties abound.
    G, C = 5, 3
    cls = torch.arange(G * G) % C
    x = F.one_hot(cls, C).float()
    emb = x.t().reshape(C, G, G)
    k = 4
    data = build_dual_space_graph(emb, k_physical=0, k_semantic=k)
    assert _pairs(data) == _brute_semantic_pairs(x.numpy(), k)
    # node 0 (class 0) takes the four lowest-index other class-0 nodes
    assert {3, 6, 9, 12} <= _neighbours(data, 0, SEM)


def test_types_union_of_both_spaces():
    emb = _embed(5, 6, seed=3)
    full = build_dual_space_graph(emb, k_physical=4, k_semantic=3)
    phys = build_dual_space_graph(emb, k_physical=4, k_semantic=0)
    sem = build_dual_space_graph(emb, k_physical=0, k_semantic=3)
    P, S = _pairs(phys), _pairs(sem)
    assert _pairs(full) == P | S
    assert _pairs(full, (EDGE_BOTH,)) == P & S
    assert _pairs(full, (EDGE_PHYSICAL,)) == P - S
    assert _pairs(full, (EDGE_SEMANTIC,)) == S - P


def test_symmetric_sorted_no_self_loops_no_duplicates():
    data = build_dual_space_graph(_embed(16, 10, seed=4), k_physical=5, k_semantic=7)
    ei = data.edge_index
    assert ei.dtype == torch.int64 and data.edge_type.dtype == torch.int64
    assert ei.shape[0] == 2 and data.edge_type.shape == (ei.shape[1],)
    assert not (ei[0] == ei[1]).any()
    pairs = list(map(tuple, ei.t().tolist()))
    assert len(set(pairs)) == len(pairs)
    assert pairs == sorted(pairs)  # by source, then target
    types = dict(zip(pairs, data.edge_type.tolist()))
    assert all((j, i) in types and types[(j, i)] == t for (i, j), t in types.items())
    assert set(data.edge_type.tolist()) <= {EDGE_PHYSICAL, EDGE_SEMANTIC, EDGE_BOTH}


def test_edge_attr_ranges_and_values():
    emb = _embed(7, 8, seed=5)
    data = build_dual_space_graph(emb, k_physical=6, k_semantic=6)
    ea = data.edge_attr
    assert ea.shape == (data.edge_index.shape[1], 2) and ea.dtype == torch.float32
    assert ea.min() >= 0 and ea.max() <= 1
    x = data.x
    for e in [0, 17, ea.shape[0] // 2, ea.shape[0] - 1]:
        i, j = data.edge_index[:, e].tolist()
        phys = torch.linalg.norm(data.pos[i] - data.pos[j]) / math.sqrt(2)
        sem = (1 - F.cosine_similarity(x[i], x[j], dim=0)) / 2
        assert ea[e, 0].item() == pytest.approx(phys.item(), abs=1e-6)
        assert ea[e, 1].item() == pytest.approx(sem.item(), abs=1e-5)
    # opposite features: cosine distance 2 -> 1; a zero vector: distance 1 -> 0.5
    flip = torch.zeros(2, 2, 2)
    flip[:, 0, 0], flip[:, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])
    d = build_dual_space_graph(flip, k_physical=0, k_semantic=3)
    attr = {p: a[1].item() for p, a in zip(map(tuple, d.edge_index.t().tolist()), d.edge_attr)}
    assert attr[(0, 1)] == pytest.approx(1.0) and attr[(1, 0)] == pytest.approx(1.0)
    assert attr[(0, 2)] == pytest.approx(0.5) and attr[(2, 3)] == pytest.approx(0.5)


def test_large_k_takes_all_other_nodes_and_tiny_grids():
    data = build_dual_space_graph(_embed(4, 3), k_physical=50, k_semantic=8)
    assert data.edge_index.shape[1] == 9 * 8
    assert (data.edge_type == EDGE_BOTH).all()
    one = build_dual_space_graph(_embed(4, 4), grid=1)
    assert one.num_nodes == 1 and one.edge_index.shape == (2, 0) and one.edge_attr.shape == (0, 2)
    none = build_dual_space_graph(_embed(4, 4), k_physical=0, k_semantic=0)
    assert none.edge_index.shape == (2, 0)


def test_dense_all_ordered_pairs():
    emb = _embed(5, 6, seed=6)
    data = build_dual_space_graph(emb, dense=True)
    N = 36
    assert data.edge_index.shape == (2, N * (N - 1))
    assert (data.edge_type == EDGE_BOTH).all()
    assert not (data.edge_index[0] == data.edge_index[1]).any()
    sparse = build_dual_space_graph(emb)
    lookup = {p: a for p, a in zip(map(tuple, data.edge_index.t().tolist()), data.edge_attr)}
    for e in range(0, sparse.edge_index.shape[1], 7):
        torch.testing.assert_close(lookup[tuple(sparse.edge_index[:, e].tolist())], sparse.edge_attr[e])


def test_deterministic():
    emb = _embed(32, 16, seed=7)
    a = build_dual_space_graph(emb)
    b = build_dual_space_graph(emb.clone())
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.edge_type, b.edge_type)
    assert torch.equal(a.edge_attr, b.edge_attr)


@pytest.mark.parametrize(
    "kwargs",
    [{"grid": 0}, {"grid": 17}, {"grid": 2.0}, {"max_grid": 0}, {"k_physical": -1}, {"k_semantic": -2}],
)
def test_argument_errors(kwargs):
    with pytest.raises(ValueError):
        build_dual_space_graph(_embed(4, 16), **kwargs)


def test_embedding_errors():
    with pytest.raises(ValueError, match="square"):
        build_dual_space_graph(torch.randn(1, 4, 16, 12))
    with pytest.raises(ValueError, match="shape"):
        build_dual_space_graph(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        build_dual_space_graph(torch.randn(8, 8))
    bad = _embed(4, 8)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        build_dual_space_graph(bad)
    with pytest.raises(ValueError):
        build_dual_space_graph(np.zeros((4, 8, 8), dtype=np.float32))


# ----------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("G,H,W", [(16, 96, 128), (32, 1024, 1024), (5, 7, 13), (13, 13, 13), (3, 5, 9)])
def test_patch_centres_round_trip(G, H, W):
    pts = patch_centres(G, H, W)
    assert pts.shape == (G * G, 2) and pts.dtype == np.float32
    assert np.array_equal(pts, np.round(pts))  # integer pixel indices, as ppd.prompts
    assert pts[:, 0].min() >= 0 and pts[:, 0].max() <= W - 1
    assert pts[:, 1].min() >= 0 and pts[:, 1].max() <= H - 1
    assert np.array_equal(patch_index(pts, G, H, W), np.arange(G * G))


def test_patch_centres_values():
    pts = patch_centres(16, 96, 128)  # patches are 8 x 6 pixels
    r, c = 2, 3
    assert pts[r * 16 + c].tolist() == [3 * 8 + 4, 2 * 6 + 3]
    with pytest.raises(ValueError):
        patch_centres(20, 16, 32)  # patches under a pixel
    with pytest.raises(ValueError):
        patch_centres(0, 16, 16)


def test_patch_index_edges_and_errors():
    G, H, W = 4, 40, 80  # patches are 20 x 10 pixels
    pts = np.array([[0, 0], [80, 40], [19.99, 9.99], [20, 10], [80, 0], [0, 40], [79.5, 39.5]])
    idx = patch_index(pts, G, H, W)
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 15, 0, 5, 3, 12, 15]
    assert patch_index(np.array([40.0, 20.0]), G, H, W).tolist() == [10]
    assert patch_index(np.zeros((0, 2)), G, H, W).shape == (0,)
    for bad in ([[-0.1, 5]], [[80.1, 5]], [[5, 40.5]], [[5, -1]], [[np.nan, 5]]):
        with pytest.raises(ValueError, match="outside"):
            patch_index(np.array(bad), G, H, W)
    with pytest.raises(ValueError, match="shape"):
        patch_index(np.zeros((3, 3)), G, H, W)


def test_patch_index_agrees_with_graph_pos():
    # the node whose normalised pos scaled to the image lands in patch i is node i
    data = build_dual_space_graph(_embed(4, 16), grid=8)
    H, W = 96, 128
    pts = data.pos.numpy() * np.array([W, H])
    assert np.array_equal(patch_index(pts, 8, H, W), np.arange(64))


# ----------------------------------------------------------------------------- networkx


def test_to_networkx():
    data = build_dual_space_graph(_embed(8, 8, seed=8), k_physical=4, k_semantic=4)
    g = to_networkx(data)
    assert not g.is_directed()
    assert g.number_of_nodes() == 64
    assert g.number_of_edges() == data.edge_index.shape[1] // 2
    assert g.graph["grid"] == 8
    assert g.nodes[9]["pos"] == pytest.approx(data.pos[9].tolist())
    e = 5
    i, j = data.edge_index[:, e].tolist()
    attrs = g.edges[i, j]
    assert attrs["type"] == int(data.edge_type[e])
    assert attrs["physical"] == pytest.approx(float(data.edge_attr[e, 0]))
    assert attrs["semantic"] == pytest.approx(float(data.edge_attr[e, 1]))


# ----------------------------------------------------------------------------- graph store


def test_graph_store_ids_derived_values_and_sharing():
    import copy

    from ppd.graphs.store import GraphStore

    store = GraphStore()
    a = build_dual_space_graph(_embed(8, 8, seed=1), k_physical=4, k_semantic=4)
    b = build_dual_space_graph(_embed(8, 8, seed=2), k_physical=4, k_semantic=4)
    assert store.register("a", a) == 0 and store.register("b", b) == 1
    assert store.register("a", b) == 0 and store.get(0) is a  # first registration wins
    assert store.id_of("b") == 1 and store.id_of("c") is None and len(store) == 2
    with pytest.raises(KeyError, match="not registered"):
        store.get(2)
    built = []
    value = store.derived(1, "cpu", lambda g: built.append(g) or g.num_nodes * 2)
    assert value == 128 and built == [b]
    assert store.derived(1, "cpu", lambda g: built.append(g) or -1) == 128 and len(built) == 1  # built once
    assert store.derived(1, "cuda", lambda g: -1) == -1  # per kind
    assert copy.deepcopy(store) is store  # shared, never copied
