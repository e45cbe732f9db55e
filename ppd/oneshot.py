"""One-shot point prompts: coarse positives and negatives on a target image by feature matching.

A user has one annotated example (a reference image and its object mask) and a new
target image. :func:`feature_matching` compares the target's patch features with the
reference object's and returns a coarse prompt set on the target, the input the prompt
defender refines (``PromptDefender.refine(target, coords, labels)``).

Features are SAM2's own image embedding by default (``segmenter.encode(image).image_embed``,
the features the segmenter and the defender's graph already use, so matching costs no
extra network); any (H', W', C) feature map (DINOv2 patches, ...) can be passed instead.
SAM2 resizes every image to its square input, so patch (i, j) of an h x w grid covers
rows ``[i H / h, (i + 1) H / h)`` and columns ``[j W / w, (j + 1) W / w)`` of an H x W
image; the same holds for a feature map given by the caller. Images of any two sizes
can be matched.

:func:`match_scores` exposes the similarity maps so the baselines of
:mod:`ppd.oneshot_baselines` select points from the same evidence, and
:func:`remove_wrong_points` is the ground-truth oracle a benchmark compares with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MatchScores", "decode_sets", "feature_matching", "grid_points", "mask_at_points", "match_scores",
           "patch_features", "remove_wrong_points", "search_edit_oracle", "select_spaced", "single_edits"]

#: Least fraction of a patch inside the reference mask for the patch to count as object.
FG_COVER = 0.5
#: Most fraction of a patch inside the reference mask for the patch to count as background.
BG_COVER = 0.05


def patch_features(segmenter: Any, image: Any) -> np.ndarray:
    """(h, w, C) float32 patch features of ``image``: SAM2's image embedding
    (``segmenter.encode(image).image_embed``, cached by the segmenter); ``image`` may be
    its :class:`ImageEmbedding` already (no encode; ``segmenter`` unused)."""
    emb = (segmenter.encode(image) if isinstance(image, np.ndarray) else image).image_embed
    return emb[0].permute(1, 2, 0).float().cpu().numpy()


def mask_cover(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) fraction of each patch's pixels inside ``mask`` (area averaging, the
    patches of the module docstring)."""
    import cv2

    h, w = grid_hw
    m = np.asarray(mask, np.float32)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    # INTER_AREA averages exactly over each output cell's source pixels (for shrinking).
    if m.shape[0] >= h and m.shape[1] >= w:
        return cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)  # a mask smaller than the grid


def grid_points(grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """(h, w, 2) float32 pixel (x, y) of each patch's centre pixel in an H x W image
    (integer-valued, inside the image)."""
    h, w = grid_hw
    H, W = image_hw
    ys = np.minimum(np.floor((np.arange(h) + 0.5) * H / h), H - 1)
    xs = np.minimum(np.floor((np.arange(w) + 0.5) * W / w), W - 1)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], -1).astype(np.float32)


@dataclass
class MatchScores:
    """How much each target patch looks like the reference object and background.

    Attributes:
        fg: (h, w) mean of the ``top_k`` highest cosine similarities of the patch to the
            reference's object patches (per-patch matching, as Matcher's).
        bg: (h, w) the same against the reference's background patches.
        proto: (h, w) cosine similarity to the mask-pooled object feature (PerSAM's
            location prior).
        nn_fg: (h, w) bool, the patch's nearest reference patch (cosine) is an object
            patch (the backward check of bidirectional matching).
        forward: (h, w) int, how many reference object patches have this patch as their
            nearest target patch (the forward matches).
        points: (h, w, 2) pixel (x, y) of each patch centre in the target image.
    """

    fg: np.ndarray
    bg: np.ndarray
    proto: np.ndarray
    nn_fg: np.ndarray
    forward: np.ndarray
    points: np.ndarray

    @property
    def margin(self) -> np.ndarray:
        """(h, w) ``fg - bg``: > 0 where a patch is closer to the object than to the background."""
        return self.fg - self.bg


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float32).reshape(-1, np.shape(f)[-1])
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8)


def _top_mean(sim: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest values of each row (k capped by the row length)."""
    k = max(1, min(k, sim.shape[1]))
    return np.sort(np.partition(sim, sim.shape[1] - k, axis=1)[:, -k:], axis=1).mean(axis=1)


def match_scores(
    ref_features: np.ndarray,
    ref_mask: np.ndarray,
    target_features: np.ndarray,
    target_hw: tuple[int, int],
    top_k: int = 3,
) -> MatchScores:
    """Similarity of every target patch to the reference object and background.

    Reference patches with at least :data:`FG_COVER` of their pixels in ``ref_mask``
    are object patches (the best-covered patch when none is: a small object), those
    with at most :data:`BG_COVER` background; patches in between (the boundary) are
    left out of both, so mixed features blur neither side.

    Args:
        ref_features: (h, w, C) reference patch features.
        ref_mask: (H_r, W_r) bool reference object mask, not empty.
        target_features: (h', w', C) target patch features (same C; any grid).
        target_hw: (H_t, W_t) of the target image, for the patch centres.
        top_k: similarities averaged per side (robust to one odd patch).
    """
    ref_features, target_features = np.asarray(ref_features), np.asarray(target_features)
    if ref_features.ndim != 3 or target_features.ndim != 3 or ref_features.shape[2] != target_features.shape[2]:
        raise ValueError(f"features must be (H', W', C) maps with the same C, got {ref_features.shape} and "
                         f"{target_features.shape}")
    ref_mask = np.asarray(ref_mask, bool)
    if not ref_mask.any():
        raise ValueError("ref_mask is empty: no reference object to match")
    cover = mask_cover(ref_mask, ref_features.shape[:2]).ravel()
    fg_idx = np.flatnonzero(cover >= FG_COVER)
    if fg_idx.size == 0:
        fg_idx = np.array([int(np.argmax(cover))])
    bg_idx = np.flatnonzero(cover <= BG_COVER)
    ref, tgt = _unit(ref_features), _unit(target_features)
    sim = tgt @ ref.T  # (n_target, n_ref) cosine similarities
    fg = _top_mean(sim[:, fg_idx], top_k)
    bg = _top_mean(sim[:, bg_idx], top_k) if bg_idx.size else np.full(len(tgt), -1.0, np.float32)
    weights = cover[fg_idx]
    proto = _unit((ref[fg_idx] * weights[:, None]).sum(0, keepdims=True))[0]
    is_fg = np.zeros(len(ref), bool)
    is_fg[fg_idx] = True
    nn_fg = is_fg[np.argmax(sim, axis=1)]
    forward = np.bincount(np.argmax(sim[:, fg_idx], axis=0), minlength=len(tgt))
    shape = target_features.shape[:2]
    return MatchScores(fg.reshape(shape), bg.reshape(shape), (tgt @ proto).reshape(shape), nn_fg.reshape(shape),
                       forward.reshape(shape), grid_points(shape, tuple(target_hw)))


def select_spaced(score: np.ndarray, allowed: np.ndarray, n: int, spacing: int,
                  taken: list[tuple[int, int]] | None = None, keep_off: int = 0) -> list[tuple[int, int]]:
    """Up to ``n`` patches ``(i, j)`` of ``allowed`` in decreasing ``score``, each at least
    ``spacing`` patches (Chebyshev) from those chosen before and ``keep_off`` patches
    from the ``taken`` ones (greedy non-maximum suppression; ties in raster order)."""
    chosen: list[tuple[int, int]] = []
    taken = taken or []
    order = np.argsort(-np.where(allowed, score, -np.inf), axis=None, kind="stable")
    w = score.shape[1]
    for flat in order:
        if len(chosen) >= n or not allowed.flat[flat]:
            break
        i, j = divmod(int(flat), w)
        if any(max(abs(i - a), abs(j - b)) < spacing for a, b in chosen):
            continue
        if any(max(abs(i - a), abs(j - b)) < keep_off for a, b in taken):
            continue
        chosen.append((i, j))
    return chosen


def grid_spacing(grid_hw: tuple[int, int], fraction: float) -> int:
    """A spacing in patches: ``fraction`` of the grid's larger side, at least 1."""
    return max(1, int(round(fraction * max(grid_hw))))


def to_prompts(scores: MatchScores, pos: list[tuple[int, int]], neg: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The patch centres of ``pos`` then ``neg`` as ``(coords (K, 2) float32, labels (K,) int64)``."""
    cells = pos + neg
    coords = np.array([scores.points[i, j] for i, j in cells], np.float32).reshape(-1, 2)
    return coords, np.array([1] * len(pos) + [0] * len(neg), np.int64)


def feature_matching(
    segmenter: Any,
    ref_image: np.ndarray | None,
    ref_mask: np.ndarray,
    target_image: np.ndarray | None,
    n_pos: int = 5,
    n_neg: int = 5,
    spacing: float = 0.1875,
    top_k: int = 3,
    ref_features: np.ndarray | None = None,
    target_features: np.ndarray | None = None,
    target_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse positive and negative points on ``target_image`` for the object that
    ``ref_mask`` marks in ``ref_image``, by matching patch features.

    Selection rule (on the patch grid; scores from :func:`match_scores`):

    * A target patch is *matched* when it is closer to the reference object than to the
      reference background (``fg > bg``: its mean top-3 cosine similarity to the object
      patches beats that to the background patches). The threshold is the reference's
      own background, not a fixed number, so it adapts to how alike object and
      background look in each pair.
    * Positives: up to ``n_pos`` (5) matched patches, most object-like (``fg``) first,
      each at least ``spacing`` (3/16 of the grid's side: 3 patches, 48 px, on the
      bundled model's 16 x 16 grid of a 256 px image) from the others, so the points
      spread over the object instead of piling on its most typical patch. When no patch is matched,
      the single patch with the largest ``fg - bg`` (SAM needs a positive).
    * Negatives: up to ``n_neg`` (5) unmatched patches, most background-like
      (``fg - bg`` smallest) first, with the same spacing and at least ``spacing``
      from every positive: confident background, as PerSAM's trough.
    * Points are the centre pixels of the chosen patches, positives first.

    Five points per label, 3/16 apart: a few well-spread points per label is what SAM is
    best with (it degrades with many or clustered ones), and enough that a defender or
    filter can drop the wrong ones and keep a usable set. Counts and spacing were picked
    on procedural pairs disjoint from the measured ones
    (``docs/experiments/oneshot_refine.py --tune``: mIoU 0.39 against 0.35 for 5 + 3
    points 1/8 apart; the best settings were within 0.02 of each other, this is the best
    with both labels). On pairs
    whose object class is unlike anything else in the target the set is mostly right;
    where other objects or the background resemble the reference object, positives land
    on them: the errors a refiner is meant to remove.

    Args:
        segmenter: a :class:`ppd.segmenter.Segmenter` (features: its image embedding);
            may be None when both feature maps are given.
        ref_image: (H_r, W_r, 3) reference image (None with ``ref_features``).
        ref_mask: (H_r, W_r) bool mask of the reference object.
        target_image: (H_t, W_t, 3) target image (None with ``target_features`` and
            ``target_hw``).
        n_pos: most positives (>= 1).
        n_neg: most negatives (>= 0).
        spacing: least distance between points of one label, as a fraction of the
            grid's larger side (0: none).
        top_k: similarities averaged per side in :func:`match_scores`.
        ref_features, target_features: (H', W', C) feature maps to use instead of the
            segmenter's (the two may have different grids).
        target_hw: the target image's (H, W); default ``target_image.shape[:2]``.

    Returns:
        ``(point_coords (K, 2) float32 pixels (x, y), point_labels (K,) int64)``, K >= 1,
        positives first: a prompt set ``PromptDefender.refine`` takes as it is.
    """
    if n_pos < 1 or n_neg < 0 or spacing < 0:
        raise ValueError(f"need n_pos >= 1, n_neg >= 0, spacing >= 0; got {n_pos}, {n_neg}, {spacing}")
    scores = scores_for(segmenter, ref_image, ref_mask, target_image, ref_features, target_features, target_hw, top_k)
    gap = grid_spacing(scores.fg.shape, spacing) if spacing > 0 else 0
    margin = scores.margin
    matched = margin > 0
    if matched.any():
        pos = select_spaced(scores.fg, matched, n_pos, gap)
    else:
        pos = select_spaced(margin, np.ones_like(matched), 1, gap)
    neg = select_spaced(-margin, ~matched, n_neg, gap, taken=pos, keep_off=gap)
    return to_prompts(scores, pos, neg)


def scores_for(segmenter: Any, ref_image, ref_mask, target_image, ref_features=None, target_features=None,
               target_hw=None, top_k: int = 3) -> MatchScores:
    """:func:`match_scores` of a reference and a target given as images (features from
    ``segmenter``) or as feature maps."""
    if ref_features is None:
        if segmenter is None or ref_image is None:
            raise ValueError("give a segmenter and ref_image, or ref_features")
        ref_features = patch_features(segmenter, ref_image)
    if target_features is None:
        if segmenter is None or target_image is None:
            raise ValueError("give a segmenter and target_image, or target_features")
        target_features = patch_features(segmenter, target_image)
    if target_hw is None:
        if target_image is None:
            raise ValueError("give target_hw with target_features and no target_image")
        target_hw = np.shape(target_image)[:2]
    return match_scores(ref_features, ref_mask, target_features, tuple(int(v) for v in target_hw), top_k)


def mask_at_points(mask: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """(K,) bool: ``mask`` at each point's pixel (x, y rounded, clipped to the image)."""
    mask, coords = np.asarray(mask, bool), np.asarray(coords).reshape(-1, 2)
    x = np.clip(np.round(coords[:, 0]).astype(int), 0, mask.shape[1] - 1)
    y = np.clip(np.round(coords[:, 1]).astype(int), 0, mask.shape[0] - 1)
    return mask[y, x]


def remove_wrong_points(coords: np.ndarray, labels: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The oracle: the prompt set without its wrong points by the ground truth (a
    positive outside ``gt``, a negative inside it). When every point is wrong the first
    stays, as refiners never return an empty set (the convention of the defense
    benchmark's oracle)."""
    coords, labels = np.asarray(coords, np.float32).reshape(-1, 2), np.asarray(labels, np.int64)
    right = mask_at_points(gt, coords) == (labels == 1)
    if not right.any():
        right[0] = True
    return coords[right], labels[right]


def single_edits(coords: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The input set, then the set without each point (when it has more than one), then
    the set with each label flipped."""
    coords, labels = np.asarray(coords, np.float32).reshape(-1, 2), np.asarray(labels, np.int64)
    k = len(labels)
    out = [(coords, labels)]
    if k > 1:
        out += [(np.delete(coords, i, 0), np.delete(labels, i)) for i in range(k)]
    out += [(coords, np.where(np.arange(k) == i, 1 - labels, labels)) for i in range(k)]
    return out


def decode_sets(segmenter: Any, embedding: Any, sets: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple]:
    """SAM's prediction for each prompt set ``(coords (K, 2), labels (K,))`` on one image,
    the sets of one length decoded in one batched call (unpadded, so each mask is the one
    ``predict`` gives the set alone, up to the last bits of batched arithmetic).

    Returns:
        Per set, in order: ``(mask (H, W) bool, score, logits (h, w), uncertainty (H, W)
        or None)``.
    """
    by_length: dict[int, list[int]] = {}
    for i, (_, lab) in enumerate(sets):
        by_length.setdefault(len(lab), []).append(i)
    out: list[Any] = [None] * len(sets)
    for rows in by_length.values():
        pred = segmenter.predict(embedding, np.stack([sets[i][0] for i in rows]), np.stack([sets[i][1] for i in rows]))
        for r, i in enumerate(rows):
            out[i] = (np.asarray(pred.masks[r], bool), float(pred.scores[r]), pred.logits[r],
                      None if pred.uncertainty is None else pred.uncertainty[r])
    return out


def search_edit_oracle(segmenter: Any, image: Any, coords: np.ndarray, labels: np.ndarray, gt: np.ndarray,
                       care: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ground truth's greedy search over removals and label flips of any point:
    from the given set, apply the one edit (drop a point, or flip its label) whose mask
    has the highest IoU with ``gt``, until no edit raises it; at least one point stays.

    Right points count as much as wrong ones here: SAM handles some right points badly,
    so this reaches well above :func:`remove_wrong_points` (0.906 against 0.774 mIoU
    in-domain on procedural pairs) and shows how much a refiner that only removes or
    relabels could gain, as far as a greedy search finds. Each step decodes every
    removal in one batch and every flip in another (sets of equal length, unpadded).

    Args:
        segmenter: the segmenter.
        image: (H, W, 3) image or its :class:`ImageEmbedding`.
        coords, labels: the prompt set, (K, 2) pixels (x, y) and (K,) 1 / 0.
        gt: (H, W) bool ground truth.
        care: (H, W) bool pixels that count (default all).

    Returns:
        ``(coords, labels, mask)``: the edited set and its mask (restricted to ``care``).
    """
    from ppd.metrics import iou

    coords, labels = np.asarray(coords, np.float32).reshape(-1, 2), np.asarray(labels, np.int64)
    gt = np.asarray(gt, bool)
    care = np.ones(gt.shape, bool) if care is None else np.asarray(care, bool)
    emb = segmenter.encode(image) if isinstance(image, np.ndarray) else image

    def decode(sets: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, np.ndarray]]:
        return [(float(iou(m & care, gt & care)), m & care) for m, *_ in decode_sets(segmenter, emb, sets)]

    (best, mask), = decode([(coords, labels)])
    while True:
        edits = single_edits(coords, labels)[1:]
        removals = len(labels) if len(labels) > 1 else 0
        edits = edits[removals:] + edits[:removals]  # flips first: ties go to a flip
        scored = decode(edits)
        j = max(range(len(edits)), key=lambda e: scored[e][0])
        if scored[j][0] <= best:
            return coords, labels, mask
        (coords, labels), (best, mask) = edits[j], scored[j]
