"""Shared state behind the point-prompt environments.

A :class:`PromptWorld` owns what every environment on the same data shares: the
segmenter, the scenes, each image's embedding and dual-space graph (computed once per
image, registered in :data:`ppd.graphs.store.GRAPH_STORE`), and a cache of
(image, object, prompt state) -> mask quality. Its :meth:`PromptWorld.evaluate` decodes
any number of prompt states, on any images, in ONE segmenter call; this is what lets
:class:`~ppd.envs.vec_env.PromptVecEnv` advance M environments with one decoder call.

Prompt state lives on graph nodes: ``node_state[i]`` is 0 (inactive), 1 (positive) or
2 (negative), and ``node_points[i]`` is the pixel (x, y) the prompt of node i sits at
(the patch centre, or the coarse point mapped to the patch).

Per-step node values come from the decoded mask, pooled onto the graph grid with
:func:`ppd.graphs.dual_space.patch_mean`: the mask coverage of each patch, and, when the
segmenter gives a pixel uncertainty map (the RUAC decoder), each patch's mean
uncertainty. Both are part of the :class:`Outcome` of a prompt state, so they cost no
extra decoder call.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ppd.data.scenes import ProceduralScenes
from ppd.data.types import Scene
from ppd.graphs.dual_space import build_dual_space_graph, patch_centres, patch_index, patch_mean
from ppd.graphs.store import GRAPH_STORE
from ppd.metrics import dice, iou
from ppd.segmenter import ImageEmbedding, Segmenter, load_segmenter

logger = logging.getLogger(__name__)

INACTIVE, POSITIVE, NEGATIVE = 0, 1, 2
QUALITY_FNS = {"iou": iou, "dice": dice}
#: Default prompt width: every decoded prompt set is padded to a multiple of this.
PROMPT_PAD = 16
#: Default ``PromptWorld(mask_max_side=...)``: states without ground truth are decoded at
#: most this many pixels on the long side for their per-node values.
MASK_MAX_SIDE = 512


@dataclass
class ImageRecord:
    """Everything static about one image: embedding, graph id, patch geometry."""

    index: int
    scene: Scene
    embedding: ImageEmbedding
    graph_id: int
    grid: int
    centres: np.ndarray  # (N, 2) pixel centres (x, y) of the patches

    @property
    def num_nodes(self) -> int:
        return self.grid * self.grid

    @property
    def hw(self) -> tuple[int, int]:
        return self.embedding.orig_hw


@dataclass
class Outcome:
    """Result of decoding one prompt state."""

    quality: float  # IoU (or Dice) against the ground truth; nan without ground truth
    coverage: np.ndarray  # (N,) fraction of each patch covered by the mask
    score: float  # SAM's predicted IoU (0 for an empty prompt set)
    mask: np.ndarray | None = field(default=None, repr=False)  # (H, W) bool, on request
    # (N,) mean pixel uncertainty of each patch, in [0, 1]; None when the segmenter gives
    # no uncertainty (SAM2's decoder); zeros for an empty prompt set (nothing decoded)
    uncertainty: np.ndarray | None = field(default=None, repr=False)
    # Removal probes (``PromptWorld.evaluate(..., probe=True)``), (N,) each, 0 at inactive
    # nodes: SAM's predicted IoU without node i's prompt minus with it, and how much the
    # mask changes without it (1 - IoU of the two masks' patch coverages). None: not probed.
    probe_score: np.ndarray | None = field(default=None, repr=False)
    probe_change: np.ndarray | None = field(default=None, repr=False)


def state_key(node_state: np.ndarray, node_points: np.ndarray) -> bytes:
    """Cache key of a prompt state: the states and the points of active nodes."""
    active = node_state != INACTIVE
    return node_state.tobytes() + np.round(node_points[active], 2).astype(np.float32).tobytes()


def removal_probes(node_state: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Leave-one-out states of a prompt state: ``(node, state without node's prompt)`` for
    every active node, in node order."""
    out = []
    for i in np.flatnonzero(node_state != INACTIVE):
        st = node_state.copy()
        st[i] = INACTIVE
        out.append((int(i), st))
    return out


def coverage_change(a: np.ndarray, b: np.ndarray) -> float:
    """1 - soft IoU of two per-patch coverages (N,) in [0, 1]: 0 same mask, 1 disjoint
    (0 when both are empty)."""
    union = float(np.maximum(a, b).sum())
    return 0.0 if union <= 0 else 1.0 - float(np.minimum(a, b).sum()) / union


def prompts_from_state(node_state: np.ndarray, node_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Active nodes -> SAM prompts: coords (K, 2) float32, labels (K,) int64 (1 fg, 0 bg)."""
    idx = np.flatnonzero(node_state != INACTIVE)
    return node_points[idx].astype(np.float32), (node_state[idx] == POSITIVE).astype(np.int64)


def state_from_prompts(
    point_coords: np.ndarray, point_labels: np.ndarray, grid: int, hw: tuple[int, int], centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map prompts onto nodes.

    Rule for several points in one patch: the node takes the point nearest to the patch
    centre (its position and label); the other points of that patch are merged into the
    node (they are kept or dropped with it). Returns ``node_state (N,) uint8``,
    ``node_points (N, 2) float32`` and ``point_node (K,) int64`` (each point's node).
    """
    n = grid * grid
    node_state = np.zeros(n, np.uint8)
    node_points = centres.astype(np.float32).copy()
    coords = np.asarray(point_coords, np.float32).reshape(-1, 2)
    labels = np.asarray(point_labels).reshape(-1)
    if len(coords) == 0:
        return node_state, node_points, np.zeros(0, np.int64)
    nodes = patch_index(coords, grid, hw[0], hw[1])
    dist = np.linalg.norm(coords - centres[nodes], axis=1)
    # visit points farthest-first so that the nearest point of each patch writes last
    for k in np.argsort(-dist, kind="stable"):
        node_state[nodes[k]] = POSITIVE if labels[k] == 1 else NEGATIVE
        node_points[nodes[k]] = coords[k]
    return node_state, node_points, nodes


def segmenter_gives_uncertainty(segmenter: Any) -> bool:
    """Whether ``segmenter``'s predictions carry ``Prediction.uncertainty`` (a
    :class:`~ppd.segmenter.Segmenter` with a RUAC head: ``uncertainty_mode`` is set)."""
    return getattr(segmenter, "uncertainty_mode", None) is not None


class PromptWorld:
    """Segmenter + scenes + caches shared by environments.

    Args:
        segmenter: a :class:`~ppd.segmenter.Segmenter` (default: the bundled model).
        dataset: a sequence of :class:`~ppd.data.types.Scene` (default: 64 procedural
            scenes of the training domain).
        grid: nodes per side (default: the segmenter's embedding grid, at most 32).
        k_physical, k_semantic: k-NN sizes of the dual-space graph.
        quality: ``"iou"`` or ``"dice"``.
        cache_size: prompt-state outcomes kept (LRU).
        prompt_pad: width W the prompts of every decoded state are padded to (with
            label -1) before decoding: K points go in as ``W * ceil(K / W)`` points.
            SAM's padding points are "not a point" tokens that the decoder attends to,
            so the mask of a prompt set depends on how much padding it gets; a fixed
            width makes a state's outcome independent of the other states decoded in
            the same batch (one decoder call for every state up to W points). ``None``:
            no padding at all, exactly ``Segmenter.predict(emb, coords, labels)`` of the
            K points, at the cost of one decoder call per distinct K in a batch.
        mask_max_side: a state without ground truth (object index -1: refinement) on an
            image whose long side exceeds this gets its mask, for the per-node coverage
            and uncertainty, upsampled to the image size scaled down to this long side
            (at least ``grid`` pixels a side), not to the full size. Why: on a 9-megapixel
            photo the full-size masks of a refinement step's prompt sets (upsampling,
            thresholding, pooling) took about ten times the decoder's time. The
            per-node values are patch means, which a few hundred pixels per patch give
            as well; training images (256 px) and states with ground truth (their IoU
            needs the full mask) are not affected, nor are masks asked for with
            ``want_mask``. None: always the full size.
    """

    def __init__(
        self,
        segmenter: Segmenter | None = None,
        dataset: Sequence[Scene] | None = None,
        grid: int | None = None,
        k_physical: int = 8,
        k_semantic: int = 8,
        quality: str = "iou",
        cache_size: int = 50_000,
        prompt_pad: int | None = PROMPT_PAD,
        mask_max_side: int | None = MASK_MAX_SIDE,
    ) -> None:
        if mask_max_side is not None and (isinstance(mask_max_side, bool) or int(mask_max_side) != mask_max_side
                                          or mask_max_side < 1):
            raise ValueError(f"mask_max_side must be an integer >= 1 or None, got {mask_max_side!r}")
        self.mask_max_side = None if mask_max_side is None else int(mask_max_side)
        if prompt_pad is not None and int(prompt_pad) < 1:
            raise ValueError(f"prompt_pad must be >= 1 or None, got {prompt_pad}")
        self.prompt_pad = None if prompt_pad is None else int(prompt_pad)
        if quality not in QUALITY_FNS:
            raise ValueError(f"quality must be one of {sorted(QUALITY_FNS)}, got {quality!r}")
        if segmenter is None:
            segmenter = load_segmenter()
        if dataset is None:
            dataset = ProceduralScenes("train", 64, seed=0)
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.segmenter = segmenter
        self.dataset = dataset
        self.grid = grid
        self.k_physical, self.k_semantic = k_physical, k_semantic
        self.quality_name = quality
        self.quality_fn = QUALITY_FNS[quality]
        self._images: dict[int, ImageRecord] = {}
        self._outcomes: OrderedDict[tuple, Outcome] = OrderedDict()
        self.cache_size = cache_size
        self.decode_calls = 0
        # Attacked prompt sets that seed defender episodes (filled by the attacker).
        self.attack_pool: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        self.attack_pool_size = 2000
        # One-shot feature-matching start sets (an envs.fm_starts.FeatureMatchStarts), set by
        # whoever trains on them; None: a defender's "fm" starts are coarse ones.
        self.fm_starts: Any = None

    # -- images --------------------------------------------------------------------
    def image(self, index: int) -> ImageRecord:
        rec = self._images.get(index)
        if rec is None:
            scene = self.dataset[index]
            rec = self.register_image(scene.image, index=index, scene=scene)
            self._images[index] = rec
        return rec

    def register_image(self, image: np.ndarray, index: int = -1, scene: Scene | None = None) -> ImageRecord:
        """Encode an image, build and register its graph (no ground truth needed)."""
        emb = self.segmenter.encode(image)
        graph = build_dual_space_graph(emb, grid=self.grid, k_physical=self.k_physical, k_semantic=self.k_semantic)
        key = f"{self.segmenter.name}:{self.segmenter.info.get('checkpoint')}:{emb.key}:{graph.grid}:{self.k_physical}:{self.k_semantic}"
        gid = GRAPH_STORE.register(key, graph)
        if scene is None:
            scene = Scene(np.zeros((*emb.orig_hw, 3), np.uint8), np.zeros((0, *emb.orig_hw), bool), domain="user")
        centres = patch_centres(graph.grid, emb.orig_hw[0], emb.orig_hw[1]).astype(np.float32)
        return ImageRecord(index, scene, emb, gid, int(graph.grid), centres)

    @property
    def num_nodes(self) -> int:
        """Nodes per graph (all images share the grid)."""
        return self.image(0).num_nodes

    @property
    def gives_uncertainty(self) -> bool:
        """Whether the segmenter's predictions carry a pixel uncertainty map (RUAC
        decoder), so that every :class:`Outcome` has per-node ``uncertainty``."""
        return segmenter_gives_uncertainty(self.segmenter)

    # -- evaluation -----------------------------------------------------------------
    def decoded_prompts(self, node_state: np.ndarray, node_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The prompts :meth:`evaluate` decodes for a state, padding included.

        Returns:
            coords (W, 2) float32 and labels (W,) int64 (1 fg, 0 bg, -1 padding), the K
            active nodes first; W = K without ``prompt_pad``, else K rounded up to a
            multiple of it. ``segmenter.predict(emb, coords, labels)`` gives the mask.
        """
        coords, labels = prompts_from_state(node_state, node_points)
        k = len(labels)
        width = k if self.prompt_pad is None else self.prompt_pad * max(1, -(-k // self.prompt_pad))
        out_c = np.zeros((width, 2), np.float32)
        out_l = np.full(width, -1, np.int64)
        out_c[:k], out_l[:k] = coords, labels
        return out_c, out_l

    def evaluate(
        self,
        requests: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]],
        want_mask: bool = False,
        probe: bool = False,
    ) -> list[Outcome]:
        """Decode prompt states ``(image, object index, node_state, node_points)``.

        All uncached, non-empty states go through ONE ``Segmenter.predict_batch`` call
        (one per prompt width, see ``prompt_pad``: one while no state has more than
        ``prompt_pad`` points). The object index selects the ground-truth mask (-1: no ground truth, quality nan).

        With ``probe=True`` every outcome also carries its removal probes
        (``Outcome.probe_score`` / ``probe_change``): the K leave-one-out states of a
        state with K prompts are decoded in the same call (and cached: they are exactly
        the states that the removal actions lead to).
        """
        if not probe:
            return self._evaluate(requests, want_mask)
        keys = [self._key(r) for r in requests]  # once per request, for both cache passes
        need = []
        for i, key in enumerate(keys):
            hit = self._outcomes.get(key)
            if want_mask or hit is None or hit.probe_score is None:
                need.append(i)
        loo: list[tuple[ImageRecord, int, np.ndarray, np.ndarray]] = []
        spans = []
        for i in need:
            rec, obj, st, pts = requests[i]
            probes = removal_probes(st)
            spans.append((i, len(requests) + len(loo), probes))
            loo.extend((rec, obj, s, pts) for _, s in probes)
        # The states and their leave-one-out states in ONE decoder call (the latter are
        # cached: they are exactly the states the removal actions lead to).
        outs = self._evaluate(list(requests) + loo, want_mask, keys + [self._key(r) for r in loo])
        for i, start, probes in spans:
            o = outs[i]
            n = len(o.coverage)
            ps, pc = np.zeros(n, np.float32), np.zeros(n, np.float32)
            for j, (node, _) in enumerate(probes):
                lo = outs[start + j]
                ps[node] = lo.score - o.score
                pc[node] = coverage_change(o.coverage, lo.coverage)
            outs[i] = replace(o, probe_score=ps, probe_change=pc)
            if keys[i] in self._outcomes:  # cached outcomes hold no mask
                self._outcomes[keys[i]] = replace(outs[i], mask=None)
        return outs[: len(requests)]

    @staticmethod
    def _key(request: tuple[ImageRecord, int, np.ndarray, np.ndarray]) -> tuple[int, int, bytes]:
        """Outcome-cache key of a request: (graph, object, prompt state)."""
        rec, obj, st, pts = request
        return (rec.graph_id, obj, state_key(st, pts))

    def _evaluate(
        self,
        requests: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]],
        want_mask: bool = False,
        keys: Sequence[tuple[int, int, bytes]] | None = None,
    ) -> list[Outcome]:
        """:meth:`evaluate` without probes; ``keys``: the requests' cache keys when the
        caller has them already."""
        keys = [self._key(r) for r in requests] if keys is None else keys
        out: list[Outcome | None] = [None] * len(requests)
        todo: list[int] = []
        for i, (rec, obj, st, pts) in enumerate(requests):
            key = keys[i]
            hit = None if want_mask else self._outcomes.get(key)
            if hit is not None:
                self._outcomes.move_to_end(key)
                out[i] = hit
            elif not (st != INACTIVE).any():
                out[i] = Outcome(0.0 if obj >= 0 else float("nan"), np.zeros(rec.num_nodes, np.float32), 0.0,
                                 np.zeros(rec.hw, bool) if want_mask else None,
                                 np.zeros(rec.num_nodes, np.float32) if self.gives_uncertainty else None)
            else:
                todo.append(i)
        # One decoder call per prompt width: a single call while every state has at most
        # prompt_pad points (see the class docstring for why the width is fixed).
        groups: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i in todo:
            c, l = self.decoded_prompts(requests[i][2], requests[i][3])
            groups.setdefault(len(l), []).append((i, c, l))
        for group in groups.values():
            rows = [i for i, _, _ in group]
            coords = np.stack([c for _, c, _ in group])
            labels = np.stack([l for _, _, l in group])
            kw = {}
            sizes = [requests[i][0].hw if want_mask or requests[i][1] >= 0 else self.stats_size(requests[i][0])
                     for i in rows]
            if any(size != requests[i][0].hw for size, i in zip(sizes, rows)):
                kw["mask_sizes"] = sizes
            pred = self.segmenter.predict_batch([requests[i][0].embedding for i in rows], coords, labels, **kw)
            self.decode_calls += 1
            quality, cover, uncs = self._row_stats([requests[i] for i in rows], pred)
            for j, i in enumerate(rows):
                rec, obj, st, pts = requests[i]
                mask, q, cov, unc = pred.masks[j], quality[j], cover[j], uncs[j]
                res = Outcome(q, cov, float(pred.scores[j]), uncertainty=unc)
                self._outcomes[keys[i]] = res
                out[i] = Outcome(q, cov, res.score, mask, unc) if want_mask else res
            while len(self._outcomes) > self.cache_size:
                self._outcomes.popitem(last=False)
        return out  # type: ignore[return-value]

    def stats_size(self, rec: ImageRecord) -> tuple[int, int]:
        """(H, W) at which a state of ``rec`` without ground truth is decoded for its
        per-node values (see ``mask_max_side``): the image size, or that scaled down to
        ``mask_max_side`` on the long side, at least ``grid`` pixels (or the image's) a side."""
        h, w = rec.hw
        if self.mask_max_side is None or max(h, w) <= self.mask_max_side:
            return (h, w)
        s = self.mask_max_side / max(h, w)
        return (max(round(h * s), min(h, rec.grid)), max(round(w * s), min(w, rec.grid)))

    def _row_stats(self, requests: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]], pred: Any
                   ) -> tuple[list[float], list[np.ndarray], list[np.ndarray | None]]:
        """Per decoded row: quality against its ground truth (nan without), per-node mask
        coverage and per-node uncertainty (None without), from ``pred`` of one
        ``predict_batch`` call. Rows that share an image size and grid go through one
        batched ``quality_fn`` and one ``patch_mean`` call (the per-row numpy and torch
        overhead was about a tenth of a 16-env vector step); the values are those of the
        row-by-row calls."""
        n = len(requests)
        grids = {rec.grid for rec, *_ in requests}
        stacked = pred.masks.dtype != object and len(grids) == 1  # one image size, one grid
        if stacked:
            grid = grids.pop()
            cover = list(patch_mean(pred.masks, grid))
            uncs = [None] * n if pred.uncertainty is None else list(patch_mean(pred.uncertainty, grid))
        else:
            cover = [patch_mean(pred.masks[j], rec.grid) for j, (rec, *_) in enumerate(requests)]
            uncs = [None if pred.uncertainty is None else patch_mean(pred.uncertainty[j], rec.grid)
                    for j, (rec, *_) in enumerate(requests)]
        quality = [float("nan")] * n
        scored = [j for j, (_, obj, *_) in enumerate(requests) if obj >= 0]
        if stacked and scored:
            gts = np.stack([requests[j][0].scene.masks[requests[j][1]] for j in scored])
            for j, q in zip(scored, np.atleast_1d(self.quality_fn(pred.masks[scored], gts))):
                quality[j] = float(q)
        else:
            for j in scored:
                rec, obj = requests[j][0], requests[j][1]
                quality[j] = float(self.quality_fn(pred.masks[j], rec.scene.masks[obj]))
        return quality, cover, uncs

    # -- attacked prompt sets ------------------------------------------------------------
    def add_attacked(self, index: int, obj: int, node_state: np.ndarray, node_points: np.ndarray) -> None:
        """Remember an attacker's final prompt state as a defender start state."""
        self.attack_pool.append((index, obj, node_state.copy(), node_points.copy()))
        if len(self.attack_pool) > self.attack_pool_size:
            self.attack_pool.pop(0)
