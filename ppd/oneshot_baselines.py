"""Training-free one-shot baselines to compare feature matching + refinement with.

Both take what :func:`ppd.oneshot.feature_matching` takes and return a prompt set the
same way (``(point_coords (K, 2) float32, point_labels (K,) int64)``):

* :func:`persam`: PerSAM's location prior (Zhang et al., "Personalize Segment Anything
  Model with One Shot", ICLR 2024): the target's cosine-similarity map to the
  mask-pooled reference feature, upsampled to the image, gives one positive at its peak
  and one negative at its trough. :func:`persam_mask` adds PerSAM's cascaded
  post-refinement (SAM again with its own previous logits as the mask input, then with
  the box of that mask as well). PerSAM's target-guided attention and semantic
  prompting change SAM's decoder and are left out: ppd keeps the segmenter as it is.
* :func:`gbmseg`: GBMSeg's rule-based point selection (Liu et al., "Training-free
  one-shot segmentation of the glomerular basement membrane", MICCAI 2024), on the same
  patch features: forward-backward matched patches as positive candidates, thinned by
  "exclusive and sparse" sampling (a wider spacing than FM, and no positive next to a
  negative), plus hard negatives: the unmatched patches that look most like the object.

All use the same similarity maps as FM (:func:`ppd.oneshot.match_scores`), so
differences come from the selection rule, not from the features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppd.oneshot import grid_spacing, scores_for, select_spaced, to_prompts

__all__ = ["gbmseg", "persam", "persam_mask"]


def _peak_and_trough(proto: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (x, y) of the maximum and minimum of the similarity map upsampled
    bilinearly to the image (as PerSAM upsamples before its argmax)."""
    import cv2

    up = cv2.resize(proto.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    hi = np.unravel_index(int(np.argmax(up)), up.shape)
    lo = np.unravel_index(int(np.argmin(up)), up.shape)
    return np.array([hi[1], hi[0]], np.float32), np.array([lo[1], lo[0]], np.float32)


def persam(segmenter: Any, ref_image: np.ndarray | None, ref_mask: np.ndarray, target_image: np.ndarray | None,
           ref_features: np.ndarray | None = None, target_features: np.ndarray | None = None,
           target_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PerSAM's two points: a positive at the peak and a negative at the trough of the
    target's similarity to the mask-pooled reference feature. Arguments as
    :func:`ppd.oneshot.feature_matching`."""
    scores = scores_for(segmenter, ref_image, ref_mask, target_image, ref_features, target_features, target_hw)
    hw = target_hw or np.shape(target_image)[:2]
    pos, neg = _peak_and_trough(scores.proto, tuple(int(v) for v in hw))
    return np.stack([pos, neg]).astype(np.float32), np.array([1, 0], np.int64)


def persam_mask(segmenter: Any, ref_image: np.ndarray, ref_mask: np.ndarray, target_image: np.ndarray,
                cascade: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PerSAM's mask of the target: SAM on :func:`persam`'s two points, then (``cascade``)
    its cascaded post-refinement: SAM with the same points and the previous best
    low-res logits as the mask input (three masks, the best by predicted IoU), then
    again with the box of that mask added. A step whose mask comes out empty is not
    taken (its input mask stays).

    Returns:
        ``(mask (H, W) bool, point_coords, point_labels)``.
    """
    coords, labels = persam(segmenter, ref_image, ref_mask, target_image)
    emb = segmenter.encode(target_image)
    pred = segmenter.predict(emb, coords, labels, multimask=True)
    mask, logits = pred.masks[0], pred.logits[0]
    if not cascade:
        return mask, coords, labels
    step = segmenter.predict(emb, coords, labels, mask_input=logits, multimask=True)
    if step.masks[0].any():
        mask, logits = step.masks[0], step.logits[0]
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        step = segmenter.predict(emb, coords, labels, boxes=box, mask_input=logits, multimask=True)
        if step.masks[0].any():
            mask = step.masks[0]
    return mask, coords, labels


def gbmseg(segmenter: Any, ref_image: np.ndarray | None, ref_mask: np.ndarray, target_image: np.ndarray | None,
           n_pos: int = 4, n_neg: int = 1, spacing: float = 0.25,
           ref_features: np.ndarray | None = None, target_features: np.ndarray | None = None,
           target_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GBMSeg-style points: rule-based thinning of the feature matches.

    * Positive candidates: target patches that some reference object patch matches
      forward (its nearest target patch) and whose own nearest reference patch is an
      object patch (backward): matches both ways agree. When none, the matched patches
      of FM (``fg > bg``); when none either, the patch with the largest ``fg - bg``.
    * Exclusive, sparse sampling: up to ``n_pos`` candidates, most forward matches first
      (then ``fg``), each at least ``spacing`` (1/4 of the grid's side, wider than FM's
      3/16) from the others.
    * Hard negatives: up to ``n_neg`` patches whose nearest reference patch is
      background but that look most like the object (highest ``fg``), at least
      ``spacing`` from each other and from every positive: the confusable background
      SAM most needs to be told about.

    Defaults (4 positives, 1 hard negative, 1/4 apart) are the best of a small grid on
    procedural pairs disjoint from the measured ones
    (``docs/experiments/oneshot_refine.py --tune``); more hard negatives lowered mIoU
    there (their nearest reference patch is background, yet many lie on the object).
    Arguments as :func:`ppd.oneshot.feature_matching`.
    """
    if n_pos < 1 or n_neg < 0 or spacing < 0:
        raise ValueError(f"need n_pos >= 1, n_neg >= 0, spacing >= 0; got {n_pos}, {n_neg}, {spacing}")
    scores = scores_for(segmenter, ref_image, ref_mask, target_image, ref_features, target_features, target_hw)
    gap = grid_spacing(scores.fg.shape, spacing) if spacing > 0 else 0
    both = (scores.forward > 0) & scores.nn_fg
    rank = scores.forward + 0.999 * (scores.fg + 1) / 2  # forward counts first; fg (mapped into [0, 1)) breaks ties
    if both.any():
        pos = select_spaced(rank, both, n_pos, gap)
    elif (scores.margin > 0).any():
        pos = select_spaced(scores.fg, scores.margin > 0, n_pos, gap)
    else:
        pos = select_spaced(scores.margin, np.ones_like(both), 1, gap)
    neg = select_spaced(scores.fg, ~scores.nn_fg, n_neg, gap, taken=pos, keep_off=gap)
    return to_prompts(scores, pos, neg)
