"""RUAC evaluation: the 3-click protocol and segmentation + uncertainty metrics per method.

Shared by ``ppd train-ruac`` (held-out check at the end of a run, ``metrics.json``) and the
analytic-vs-MC check ``docs/experiments/ruac_analytic_vs_mc.py``; ``ppd bench``'s
``uncertainty`` protocol builds on its clicks and maps (per object, void-aware).

3-click protocol (RUAC, as the authors' code does it; ``docs/ruac.md``):

* click 1: a ground-truth pixel drawn uniformly at random (seeded per scene and object);
* clicks 2 and 3: error-region clicks (:func:`protocol_click`): the larger (in pixels) of
  the false-negative / false-positive regions of the current prediction, at the argmax of
  its distance transform (the image border counts as boundary); positive if the FN region
  is the larger one; at least :data:`MIN_CLICK_SEPARATION` px from the earlier clicks;
* the clicks are derived ONCE, from the predictions of a reference segmenter (the base
  SAM2 decoder: one click -> multimask, best predicted IoU; more clicks -> one mask), and
  reused for every method, so all methods see identical prompts. Every method is then
  scored on its single-mask prediction from all three clicks.

Uncertainty and probability of each method (:func:`predict_maps`), all computed from the
decoder's low-resolution outputs upsampled bilinearly to the image size as the segmenter
does:

* ``base`` (SAM2's decoder, no uncertainty of its own): probability ``sigmoid(logit)``,
  uncertainty = its normalised binary entropy (the natural "uncertainty" of a
  deterministic mask decoder, in [0, 1] like RUAC's);
* ``analytic`` / ``mc`` (the RUAC Bayesian decoder): uncertainty = the head's own map
  (``Prediction.uncertainty``: MacKay / sampled normalised entropy); probability = MacKay's
  probit ``sigmoid(mu / sqrt(1 + pi/8 var))`` with the head's analytic (``analytic``) or
  sampled (``mc``) logit variance: the predictive probability, on the same side of 0.5 as
  the mean logit, so the evaluated mask is exactly the segmenter's mask (``mu > 0``).

Metrics (:mod:`ppd.metrics`), pixels of all objects of a domain pooled (images of any
sizes, :func:`pixel_metrics`): J&F and IoU (mean per object), PAvPU (thresholds 0.01/0.05/0.1), AURC and E-AURC (ranking by
``1 - uncertainty``), ECE (15 bins), pixel AUROC of uncertainty for errors, Pearson of
uncertainty vs error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ppd import io
from ppd.data.scenes import ProceduralScenes
from ppd.data.types import Scene
from ppd.mask_distances import inner_distance
from ppd.metrics import aurc, e_aurc, ece, iou, j_and_f, pavpu, uncertainty_auroc, uncertainty_error_pearson
from ppd.ruac.head import BayesianMaskDecoder
from ppd.ruac.train_config import RuacTrainConfig
from ppd.ruac.weibull import _binary_entropy_from_logit
from ppd.segmenter import ImageEmbedding, Segmenter, decode, decode_bayesian

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_SEED",
    "METHOD_MODES",
    "METRIC_KEYS",
    "MIN_CLICK_SEPARATION",
    "ObjectClicks",
    "decoder_latency",
    "evaluate_heldout",
    "evaluate_method",
    "load_clicks",
    "pixel_metrics",
    "predict_maps",
    "protocol_click",
    "save_clicks",
    "three_click_protocol",
]

#: First seed of the held-out evaluation scenes (``ProceduralScenes`` salts it with the
#: domain), far from every training seed.
EVAL_SEED = 10_000_000 + 20_000
#: How a method turns decoder outputs into uncertainty: SAM2's decoder or a RUAC head.
METHOD_MODES = ("base", "analytic", "mc")
#: Metric keys of :func:`pixel_metrics`, in table order.
METRIC_KEYS = ("j_and_f", "iou", "pavpu", "aurc", "e_aurc", "ece", "auroc", "pearson", "error_rate")


# ----------------------------------------------------------------------------- clicks
def protocol_click(
    pred: np.ndarray, gt: np.ndarray, previous: np.ndarray | None = None, min_separation: float = 0.0
) -> tuple[np.ndarray, int] | None:
    """RUAC's error-region click: inside the larger of the FN / FP regions.

    Unlike the RITM/SAM rule (:func:`ppd.prompts.corrective_click`, which compares the two
    regions' depths), the region is chosen by pixel count (ties go to FN); the click is
    the argmax of that region's distance transform (first pixel in raster order on ties).
    Pixels closer than ``min_separation`` to a ``previous`` click are not eligible (the
    paper's "minimum click separation": without it a prediction that ignores a click gets
    the same click again); if the larger region has no eligible pixel, the other region is
    used.

    Args:
        pred: (H, W) bool predicted mask.
        gt: (H, W) bool ground-truth mask.
        previous: (K, 2) earlier clicks (x, y) in pixels, or None.
        min_separation: minimum Euclidean distance in pixels to every earlier click.

    Returns:
        ``(xy (2,) float32 in pixels, label)`` with label 1 for an FN click, 0 for FP;
        None when the prediction is perfect or no error pixel is eligible.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be (H, W) masks of one shape, got {pred.shape} and {gt.shape}")
    fn, fp = gt & ~pred, pred & ~gt
    nfn, nfp = int(fn.sum()), int(fp.sum())
    if nfn + nfp == 0:
        return None
    eligible = np.ones_like(gt)
    if previous is not None and len(previous) and min_separation > 0:
        yy, xx = np.mgrid[: gt.shape[0], : gt.shape[1]]
        for x, y in np.asarray(previous, np.float64).reshape(-1, 2):
            eligible &= (xx - x) ** 2 + (yy - y) ** 2 >= min_separation**2
    order = [(fn, 1), (fp, 0)] if nfn >= nfp else [(fp, 0), (fn, 1)]
    for region, label in order:
        dist = np.where(eligible, inner_distance(region), 0.0)
        if dist.max() > 0:
            y, x = np.unravel_index(np.argmax(dist), region.shape)
            return np.array([x, y], np.float32), label
    return None


def first_click(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Click 1 of the protocol: a uniformly random ground-truth pixel, (2,) float32 (x, y)."""
    ys, xs = np.nonzero(gt)
    if len(ys) == 0:
        raise ValueError("cannot click on an empty ground-truth mask")
    i = int(rng.integers(len(ys)))
    return np.array([xs[i], ys[i]], np.float32)


@dataclass
class ObjectClicks:
    """The protocol's clicks for one object.

    Attributes:
        scene: index of the scene in the evaluated sequence.
        obj: index of the object in ``scene.masks``.
        point_coords: (K, 2) float32 (x, y) pixels (K = 3 unless the prediction became
            perfect earlier).
        point_labels: (K,) int64, 1 foreground / 0 background.
    """

    scene: int
    obj: int
    point_coords: np.ndarray
    point_labels: np.ndarray


#: Default minimum distance in pixels between protocol clicks (the paper's value is not
#: given; 5 px is ~2% of the 256 px procedural scenes).
MIN_CLICK_SEPARATION = 5.0


def three_click_protocol(
    seg: Segmenter,
    scenes: Sequence[Scene],
    n_clicks: int = 3,
    max_objects: int = 3,
    seed: int = 0,
    embeddings: Sequence[ImageEmbedding] | None = None,
    min_separation: float = MIN_CLICK_SEPARATION,
) -> list[ObjectClicks]:
    """Derive the protocol's clicks from ``seg``'s predictions (see the module docstring).

    Args:
        seg: the reference segmenter (use the base SAM2 decoder for a fair comparison).
        scenes: the evaluation scenes; objects ``0..max_objects-1`` of each are prompted.
        n_clicks: clicks per object.
        max_objects: objects per scene.
        seed: click 1 of object ``j`` of scene ``i`` comes from
            ``np.random.default_rng([seed, i, j])``.
        embeddings: the scenes' embeddings if already computed.
        min_separation: see :func:`protocol_click`.

    Returns:
        One :class:`ObjectClicks` per prompted object, scene by scene.
    """
    if n_clicks < 1:
        raise ValueError(f"n_clicks must be >= 1, got {n_clicks}")
    out: list[ObjectClicks] = []
    for i, scene in enumerate(scenes):
        emb = embeddings[i] if embeddings is not None else seg.encode(scene.image)
        objs = list(range(min(max_objects, scene.num_objects)))
        if not objs:
            continue
        pts = [first_click(scene.masks[j], np.random.default_rng([seed, i, j]))[None] for j in objs]
        lab = [np.ones(1, np.int64) for _ in objs]
        active = list(range(len(objs)))
        for k in range(1, n_clicks):
            if not active:
                break
            coords = np.stack([pts[a] for a in active])
            labels = np.stack([lab[a] for a in active])
            masks = seg.predict(emb, coords, labels, multimask=(k == 1)).masks
            still = []
            for a, m in zip(active, masks):
                c = protocol_click(m, scene.masks[objs[a]], pts[a], min_separation)
                if c is None:
                    continue
                pts[a] = np.concatenate([pts[a], c[0][None]])
                lab[a] = np.concatenate([lab[a], [c[1]]])
                still.append(a)
            active = still
        out.extend(ObjectClicks(i, j, pts[a].astype(np.float32), lab[a].astype(np.int64)) for a, j in enumerate(objs))
    return out


def save_clicks(clicks: Sequence[ObjectClicks], path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write clicks (and what they were derived on) to a JSON file, atomically."""
    rows = [
        {"scene": c.scene, "obj": c.obj, "point_coords": c.point_coords.tolist(), "point_labels": c.point_labels.tolist()}
        for c in clicks
    ]
    return io.save_json({"meta": dict(meta or {}), "clicks": rows}, path)


def load_clicks(path: str | os.PathLike) -> tuple[list[ObjectClicks], dict]:
    """Read a file written by :func:`save_clicks`: ``(clicks, meta)``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        clicks = [
            ObjectClicks(int(r["scene"]), int(r["obj"]), np.asarray(r["point_coords"], np.float32).reshape(-1, 2),
                         np.asarray(r["point_labels"], np.int64))
            for r in data["clicks"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read clicks file {p}: {exc}") from None
    return clicks, dict(data.get("meta", {}))


# ----------------------------------------------------------------------------- predictions
def _low_res_outputs(
    seg: Segmenter,
    head: torch.nn.Module | None,
    emb: ImageEmbedding,
    coords: np.ndarray,
    labels: np.ndarray,
    mode: str,
    mc_samples: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean logits, logit variance, uncertainty)``, each (B, h, w) float32 at low res."""
    coords_t, labels_t, _, _ = seg._prompts_to_tensors(np.asarray([emb.orig_hw], np.float64), coords, labels, None, None)
    with torch.inference_mode(), seg._autocast():
        if mode == "base":
            low, _ = decode(seg.model, emb.image_embed, emb.high_res_feats, coords_t, labels_t, multimask=False)
            low = low[:, 0].float()
            return low, torch.zeros_like(low), _binary_entropy_from_logit(low)
        if head is None:
            raise ValueError(f"mode {mode!r} needs a RUAC head")
        out = decode_bayesian(
            seg.model, head, emb.image_embed, emb.high_res_feats, coords_t, labels_t,
            multimask=False, mode=mode, mc_samples=mc_samples, generator=generator,
        )
        return out.logits[:, 0].float(), out.logit_var[:, 0].float(), out.uncertainty[:, 0].float()


def predict_maps(
    seg: Segmenter,
    head: torch.nn.Module | None,
    emb: ImageEmbedding,
    coords: np.ndarray,
    labels: np.ndarray,
    mode: str = "analytic",
    mc_samples: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Probability and uncertainty maps of B prompt sets on one image (module docstring).

    Args:
        seg: supplies the SAM2 model (its own decoder is used in ``"base"`` mode).
        head: a ``ppd.ruac.BayesianMaskDecoder`` on ``seg.model``'s decoder, or None for
            ``"base"``.
        emb: the image's embedding.
        coords: (B, K, 2) points (x, y) in image pixels; labels (B, K) 1 / 0 / -1 padding.
        mode: ``"base"``, ``"analytic"`` or ``"mc"``.
        mc_samples: T in ``"mc"`` mode; draws come from a generator seeded with ``seed``.

    Returns:
        ``(prob, uncertainty)``: (B, H, W) float32 in [0, 1] at image size; the mask is
        ``prob > 0.5`` (identical to ``seg.predict``'s mask for the same decoder).
    """
    if mode not in METHOD_MODES:
        raise ValueError(f"mode must be one of {METHOD_MODES}, got {mode!r}")
    gen = torch.Generator(device=seg.device).manual_seed(seed) if mode == "mc" else None
    mu, var, unc = _low_res_outputs(seg, head, emb, coords, labels, mode, mc_samples, gen)
    size = tuple(emb.orig_hw)
    up = lambda t: F.interpolate(t[:, None], size, mode="bilinear", align_corners=False)[:, 0]  # noqa: E731
    mu_up, var_up = up(mu), up(var).clamp_min(0.0)
    prob = torch.sigmoid(mu_up * torch.rsqrt(1.0 + math.pi / 8.0 * var_up))
    return prob.cpu().numpy().astype(np.float32), up(unc).clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------- metrics
def _map_list(maps: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One (B, H, W) or (H, W) array, or a sequence of them -> a list of arrays."""
    if isinstance(maps, np.ndarray):
        return [maps]
    return [np.asarray(m) for m in maps]


def _pooled(maps: list[np.ndarray]) -> np.ndarray:
    """Every pixel of every map, in order, as one (N,) array."""
    return np.concatenate([m.ravel() for m in maps])


def pixel_metrics(
    prob: np.ndarray | Sequence[np.ndarray],
    uncertainty: np.ndarray | Sequence[np.ndarray],
    gt: np.ndarray | Sequence[np.ndarray],
) -> dict[str, float]:
    """Segmentation and uncertainty metrics of B objects, pixels pooled (module docstring).

    Images of different sizes are scored together by passing sequences: the per-object
    metrics (J&F, IoU) are averaged over all objects, every per-pixel metric pools all
    pixels of all maps (PAvPU at pixel level). A single (B, H, W) array is the sequence
    of one; the pooled result does not depend on how the maps are grouped.

    Args:
        prob, uncertainty: (B, H, W) float in [0, 1], or a sequence of (B_i, H_i, W_i) or
            (H_i, W_i) arrays of any sizes.
        gt: (B, H, W) bool, or a sequence of the same shapes as ``prob``.

    Returns:
        :data:`METRIC_KEYS` -> float; ``j_and_f`` and ``iou`` in [0, 1] (mean per object),
        ``auroc`` / ``pearson`` nan when the predictions have no error at all.

    Raises:
        ValueError: no maps, or the three inputs differ in number or shape of maps.
    """
    probs, uncs, gts = _map_list(prob), _map_list(uncertainty), _map_list(gt)
    if not probs or not len(probs) == len(uncs) == len(gts):
        raise ValueError(f"need the same number (>= 1) of prob, uncertainty and gt maps, got {len(probs)}, {len(uncs)}, {len(gts)}")
    for i, (p, u, g) in enumerate(zip(probs, uncs, gts)):
        if not p.shape == u.shape == g.shape:
            raise ValueError(f"maps {i}: prob {p.shape}, uncertainty {u.shape} and gt {g.shape} differ in shape")
    per_object_jf = np.concatenate([np.ravel(j_and_f(p > 0.5, g)) for p, g in zip(probs, gts)])
    per_object_iou = np.concatenate([np.ravel(iou(p > 0.5, g)) for p, g in zip(probs, gts)])
    prob_px, unc_px, gt_px = _pooled(probs), _pooled(uncs), _pooled(gts)
    pred = prob_px > 0.5
    error = pred != gt_px
    return {
        "j_and_f": float(np.mean(per_object_jf)),
        "iou": float(np.mean(per_object_iou)),
        "pavpu": pavpu(prob_px[None], unc_px[None], gt_px[None]),  # (1, N): pixel-level windows
        "aurc": aurc(1.0 - unc_px, ~error),
        "e_aurc": e_aurc(1.0 - unc_px, ~error),
        "ece": ece(prob_px, gt_px),
        "auroc": uncertainty_auroc(unc_px, error) if error.any() and not error.all() else float("nan"),
        "pearson": uncertainty_error_pearson(unc_px, error.astype(np.float32)) if error.any() and not error.all() else float("nan"),
        "error_rate": float(np.mean(error)),
    }


def evaluate_method(
    seg: Segmenter,
    head: torch.nn.Module | None,
    scenes: Sequence[Scene],
    clicks: Sequence[ObjectClicks],
    mode: str = "analytic",
    mc_samples: int = 20,
    seed: int = 0,
    embeddings: Sequence[ImageEmbedding] | None = None,
    return_maps: bool = False,
) -> dict[str, float] | tuple[dict[str, float], dict[str, np.ndarray]]:
    """Score one method on the protocol's clicks (all objects of a scene in one decoder call).

    Args:
        seg, head, mode, mc_samples: as :func:`predict_maps` (``seed`` is mixed with the
            scene index for ``"mc"`` draws).
        scenes: the scenes the clicks refer to.
        clicks: from :func:`three_click_protocol` (or :func:`load_clicks`).
        embeddings: the scenes' embeddings if already computed.
        return_maps: also return the ``prob``, ``uncertainty`` and ``gt`` maps of every
            object: (B, H, W) arrays when all scenes have one size, else lists of B
            (H_i, W_i) arrays.

    Returns:
        :func:`pixel_metrics` plus ``objects`` (count); with ``return_maps`` also the maps.
        Scenes of different sizes are pooled as :func:`pixel_metrics` describes.
    """
    by_scene: dict[int, list[ObjectClicks]] = {}
    for c in clicks:
        by_scene.setdefault(c.scene, []).append(c)
    probs, uncs, gts = [], [], []
    for i, cs in sorted(by_scene.items()):
        scene = scenes[i]
        emb = embeddings[i] if embeddings is not None else seg.encode(scene.image)
        k = max(len(c.point_labels) for c in cs)
        coords = np.zeros((len(cs), k, 2), np.float32)
        labels = -np.ones((len(cs), k), np.int64)
        for r, c in enumerate(cs):
            coords[r, : len(c.point_labels)] = c.point_coords
            labels[r, : len(c.point_labels)] = c.point_labels
        p, u = predict_maps(seg, head, emb, coords, labels, mode, mc_samples, seed * 100_003 + i)
        probs.append(p)
        uncs.append(u)
        gts.append(scene.masks[[c.obj for c in cs]])
    if not probs:
        raise ValueError("no object to evaluate: the clicks are empty")
    res = pixel_metrics(probs, uncs, gts)  # scenes may differ in size: pixels pooled
    res["objects"] = int(sum(len(p) for p in probs))
    if return_maps:
        if len({p.shape[1:] for p in probs}) == 1:
            maps = {"prob": np.concatenate(probs), "uncertainty": np.concatenate(uncs), "gt": np.concatenate(gts)}
        else:
            maps = {"prob": [*chain(*probs)], "uncertainty": [*chain(*uncs)], "gt": [*chain(*gts)]}
        return res, maps
    return res


def decoder_latency(
    seg: Segmenter,
    head: torch.nn.Module | None,
    emb: ImageEmbedding,
    coords: np.ndarray,
    labels: np.ndarray,
    mode: str,
    mc_samples: int = 20,
    repeats: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median milliseconds of one decoder call (prompt encoder + decoder, low-res outputs)
    on B prompt sets of one image, after one warm-up call."""
    gen = torch.Generator(device=seg.device).manual_seed(0) if mode == "mc" else None
    times = []
    for r in range(repeats + 1):
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        _low_res_outputs(seg, head, emb, coords, labels, mode, mc_samples, gen)
        if seg.device.type == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append(clock() - t)
    return float(np.median(times) * 1e3)


def evaluate_heldout(
    seg: Segmenter, head: BayesianMaskDecoder, cfg: RuacTrainConfig, mc_samples: int = 20
) -> dict[str, dict[str, float]]:
    """3-click protocol on ``cfg.eval_scenes`` held-out scenes of the training domain:
    the base decoder vs the head (analytic and MC uncertainty), same clicks for all."""
    scenes = ProceduralScenes(cfg.domain, cfg.eval_scenes, seed=EVAL_SEED, size=cfg.scene_size)
    scenes = [scenes[i] for i in range(len(scenes))]
    embs = [seg.encode(s.image) for s in scenes]
    clicks = three_click_protocol(seg, scenes, max_objects=cfg.eval_objects, seed=cfg.seed, embeddings=embs)
    head.eval()
    out = {
        "base": evaluate_method(seg, None, scenes, clicks, "base", embeddings=embs),
        "ruac": evaluate_method(seg, head, scenes, clicks, "analytic", embeddings=embs),
        "ruac_mc": evaluate_method(seg, head, scenes, clicks, "mc", mc_samples, seed=cfg.seed, embeddings=embs),
    }
    return out
