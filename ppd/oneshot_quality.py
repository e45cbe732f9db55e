"""Choosing the edit of a one-shot prompt set that helps, by a learned mask-quality score.

Feature matching (:func:`ppd.oneshot.feature_matching`) puts some of its points on the
wrong object, and SAM handles some right points badly: the ground truth's best removals
and label flips of FM's points lift in-domain mIoU from 0.675 to 0.906
(:func:`ppd.oneshot.search_edit_oracle`). A refiner without the ground truth needs a
score that says which edit helps. SAM's own predicted IoU does not (greedily following
it loses to FM in-domain), and neither does any score built from the patch similarity
maps alone; the reference image holds more than its 16 x 16 patch features.

:class:`EditChooser` is that score: a ridge regression that predicts, from features of a
candidate's mask (:func:`mask_features`), how much IoU the candidate gains over the input
set. The features compare the mask with what the reference says about the target
(:class:`Evidence`, computed once per pair):

* SAM's view: its predicted IoU and the mask's stability (area above logit 2 over area
  above -2);
* the patch similarity maps of :func:`ppd.oneshot.match_scores`: how much of the matched
  region the mask covers, how much of the mask is matched, the mean margin and prototype
  similarity inside and outside;
* pixel colour: the log-likelihood ratio of each target pixel's colour under the
  reference object's and the reference background's colour histograms (Lab, 8 bins per
  channel; classic histogram back-projection, at full resolution where the patch maps
  are coarse), inside and outside the mask and how much of the object-coloured region the
  mask covers;
* shape: the mask's area over the reference object's, its parts, and the solidity and
  circularity of its largest part against the reference object's;
* edges: mean image gradient on the mask's boundary over the image's mean;
* the input points: how many of the input positives the mask covers and how many
  negatives it leaves out.

Each feature enters as its value and as its difference to the input set's. The
candidates (:func:`single_edits`) are the input set, the set without each point and the
set with each label flipped (and, in :func:`choose_edit`, any further sets the caller
adds, such as a defender's output). The candidate with the largest predicted gain wins
when that gain is above ``tau``, else the input stays: one decision, not a search.

Measured (``docs/experiments/oneshot_learned_selection.py``; bundled model, fitted on 500
procedural ``train`` pairs, 150 fresh pairs per domain; mIoU of FM -> the chosen
candidate): train 0.617 -> 0.736, clutter 0.275 -> 0.310, texture 0.398 -> 0.530.
Without the colour and shape features: 0.670, 0.307, 0.459. Colour is by construction a
strong cue on procedural pairs (a class has one colour); on photographs it is a weaker
one, so refit the chooser on pairs from your own data (:func:`fit_chooser`) before
trusting it there. The features depend on the segmenter (its predicted IoU, its logits):
a chooser fitted for one segmenter is refit for another.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ppd.oneshot import MatchScores, decode_sets, mask_at_points, mask_cover, patch_features, scores_for, single_edits

logger = logging.getLogger(__name__)

__all__ = ["CHOOSER_FILE", "EditChooser", "Evidence", "FEATURES", "choose_edit", "chooser_of_run", "colour_likelihood",
           "evidence_for", "fit_chooser", "load_chooser", "mask_features", "single_edits"]

#: File name of a chooser in a run folder (and of the bundled one in ``ppd/assets/defender``).
CHOOSER_FILE = "edit_chooser.json"
#: Histogram bins per Lab channel of :func:`colour_likelihood`.
COLOUR_BINS = 8
#: Least share of a colour bin in :func:`colour_likelihood` (bounds the ratio at about +-7).
COLOUR_FLOOR = 1e-3
#: Names of :func:`mask_features`' values, in order.
FEATURES = (
    "sam_score", "stability", "matched_share_in", "matched_covered", "margin_in", "margin_out", "proto_contrast",
    "log_area", "log_parts", "fm_pos_hit", "fm_neg_missed", "points", "positives",
    "colour_in", "colour_out", "colour_contrast", "colour_covered", "colour_share_in",
    "log_area_ratio", "solidity_diff", "circularity_diff", "solidity_gap", "circularity_gap",
    "log_area_ratio_per_part", "boundary_gradient",
)


def _lab_bins(image: np.ndarray) -> np.ndarray:
    import cv2

    img = np.asarray(image)
    if img.dtype != np.uint8:  # floats in [0, 1] or [0, 255]
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    q = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2LAB) // (256 // COLOUR_BINS)
    q = q.astype(np.int64)
    return (q[..., 0] * COLOUR_BINS + q[..., 1]) * COLOUR_BINS + q[..., 2]


def colour_likelihood(ref_image: np.ndarray, ref_mask: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(H, W) float32 log-likelihood ratio of each pixel's colour of ``image`` under the
    reference object's colour histogram against the reference background's (Lab,
    :data:`COLOUR_BINS` bins per channel, each share floored at :data:`COLOUR_FLOOR` so
    that a colour neither side shows counts as neither): > 0 where a pixel is coloured
    like the object rather than its background."""
    ref_bins, m = _lab_bins(ref_image).ravel(), np.asarray(ref_mask, bool).ravel()
    n = COLOUR_BINS ** 3
    fg = np.bincount(ref_bins[m], minlength=n) / max(1, m.sum())
    bg = np.bincount(ref_bins[~m], minlength=n) / max(1, (~m).sum())
    table = (np.log(np.maximum(fg, COLOUR_FLOOR)) - np.log(np.maximum(bg, COLOUR_FLOOR))).astype(np.float32)
    return table[_lab_bins(image)]


def _shape(mask: np.ndarray) -> tuple[float, float]:
    """Solidity and circularity of the largest part of ``mask`` (0, 0 when empty)."""
    import cv2

    n, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    if n <= 1:
        return 0.0, 0.0
    big = (parts == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    contour = max(cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0], key=cv2.contourArea)
    area, perimeter = cv2.contourArea(contour), cv2.arcLength(contour, True)
    return area / (cv2.contourArea(cv2.convexHull(contour)) + 1e-6), 4 * np.pi * area / (perimeter ** 2 + 1e-6)


@dataclass
class Evidence:
    """What the reference says about one target, for :func:`mask_features`.

    Attributes:
        match: the patch similarity maps (:func:`ppd.oneshot.match_scores`).
        colour: (H, W) :func:`colour_likelihood` of the target.
        gradient: (H, W) image gradient magnitude of the target (Sobel, grey).
        ref_area: pixels of the reference object.
        ref_shape: solidity and circularity of the reference object.
        coords, labels: the input prompt set (the candidates' reference point).
    """

    match: MatchScores
    colour: np.ndarray = field(repr=False)
    gradient: np.ndarray = field(repr=False)
    ref_area: float
    ref_shape: tuple[float, float]
    coords: np.ndarray
    labels: np.ndarray


def evidence_for(segmenter: Any, ref_image: np.ndarray, ref_mask: np.ndarray, image: np.ndarray,
                 coords: np.ndarray, labels: np.ndarray, embedding: Any = None) -> Evidence:
    """:class:`Evidence` of a reference (image and object mask) on a target ``image``
    for the prompt set ``(coords, labels)`` (patch features from ``segmenter``, or from
    the target's ``embedding`` when the caller holds it: no encode)."""
    import cv2

    ref_mask = np.asarray(ref_mask, bool)
    grey = cv2.cvtColor(np.asarray(image)[..., :3].astype(np.float32), cv2.COLOR_RGB2GRAY)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    match = scores_for(segmenter, ref_image, ref_mask, image,
                       target_features=patch_features(segmenter, image if embedding is None else embedding))
    return Evidence(match, colour_likelihood(ref_image, ref_mask, image),
                    gradient, float(ref_mask.sum()), _shape(ref_mask),
                    np.asarray(coords, np.float32).reshape(-1, 2), np.asarray(labels, np.int64))


def mask_features(mask: np.ndarray, score: float, logits: np.ndarray, ev: Evidence, labels: np.ndarray) -> np.ndarray:
    """(len(FEATURES),) float64 features of a candidate's ``mask`` (its SAM ``score``
    and ``logits``; ``labels`` of the candidate's points) against the evidence
    (module docstring)."""
    import cv2

    mask = np.asarray(mask, bool)
    cover = mask_cover(mask, ev.match.fg.shape)
    margin = ev.match.margin
    matched = (margin > 0).astype(np.float32)
    inside, outside = cover.sum() + 1e-6, (1 - cover).sum() + 1e-6
    hit = mask_at_points(mask, ev.coords)
    parts = cv2.connectedComponents(mask.astype(np.uint8))[0] - 1
    area = float(mask.sum())
    colour_in = float(ev.colour[mask].mean()) if area else float(ev.colour.min())
    colour_out = float(ev.colour[~mask].mean()) if (~mask).any() else 0.0
    coloured = ev.colour > 0
    solidity, circularity = _shape(mask)
    edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    pos, neg = ev.labels == 1, ev.labels == 0
    return np.array([
        score,
        (logits > 2).sum() / max(1, (logits > -2).sum()),
        (cover * matched).sum() / inside, (cover * matched).sum() / (matched.sum() + 1e-6),
        (cover * margin).sum() / inside, ((1 - cover) * margin).sum() / outside,
        (cover * ev.match.proto).sum() / inside - ((1 - cover) * ev.match.proto).sum() / outside,
        np.log(mask.mean() + 1e-4), np.log1p(parts),
        hit[pos].mean() if pos.any() else 1.0, (~hit[neg]).mean() if neg.any() else 1.0,
        len(labels), (np.asarray(labels) == 1).sum(),
        colour_in, colour_out, colour_in - colour_out,
        (coloured & mask).sum() / (coloured.sum() + 1e-6), (coloured & mask).sum() / (area + 1e-6),
        np.log((area + 1) / (ev.ref_area + 1)),
        solidity - ev.ref_shape[0], circularity - ev.ref_shape[1],
        abs(solidity - ev.ref_shape[0]), abs(circularity - ev.ref_shape[1]),
        np.log((area + 1) / (ev.ref_area * max(1, parts) + 1)),
        ev.gradient[edge].mean() / (ev.gradient.mean() + 1e-6) if edge.any() else 0.0,
    ], np.float64)


def _design(x: np.ndarray) -> np.ndarray:
    """Each candidate's features, their differences to the first candidate's (the input
    set's), and a constant."""
    return np.hstack([x - x[0], x, np.ones((len(x), 1))])


@dataclass
class EditChooser:
    """A linear predictor of a candidate's IoU gain over the input set (module docstring).

    Attributes:
        mean, scale: standardisation of the design (:func:`_design` of the features).
        weights: ridge weights on the standardised design.
        tau: least predicted gain for a candidate to replace the input set.
        meta: how it was fitted (pairs, ridge, segmenter), for reading.
    """

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    tau: float = 0.02
    meta: dict = field(default_factory=dict)

    def gains(self, features: np.ndarray) -> np.ndarray:
        """(F,) predicted IoU gain of each candidate over the first (the input set; 0)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != len(FEATURES):
            raise ValueError(f"features must be (F, {len(FEATURES)}), got {x.shape}")
        g = ((_design(x) - self.mean) / self.scale) @ self.weights
        g[0] = 0.0
        return g

    def pick(self, features: np.ndarray) -> int:
        """Index of the chosen candidate: the largest predicted gain when above ``tau``, else 0."""
        g = self.gains(features)
        j = int(np.argmax(g))
        return j if g[j] > self.tau else 0

    @classmethod
    def fit(cls, tables: Sequence[tuple[np.ndarray, np.ndarray]], ridge: float = 10.0, tau: float = 0.02,
            meta: dict | None = None) -> EditChooser:
        """Ridge regression (on standardised columns, the constant unpenalised in scale)
        of each candidate's IoU gain over its table's first candidate; ``tables``: per
        pair, ``(features (F, D), ious (F,))``."""
        if not tables:
            raise ValueError("no candidate tables to fit the chooser on")
        a = np.vstack([_design(np.asarray(x, np.float64)) for x, _ in tables])
        b = np.concatenate([np.asarray(y, np.float64) - y[0] for _, y in tables])
        mean, scale = a.mean(0), a.std(0) + 1e-9
        mean[-1], scale[-1] = 0.0, 1.0
        z = (a - mean) / scale
        weights = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ b)
        return cls(mean, scale, weights, float(tau), {"ridge": ridge, "pairs": len(tables), **(meta or {})})

    def save(self, path: str | Path) -> Path:
        """Write the chooser as JSON (atomically)."""
        from ppd import io

        doc = {"features": list(FEATURES), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
               "weights": self.weights.tolist(), "tau": self.tau, "meta": self.meta}
        return io.save_json(doc, path)

    @classmethod
    def load(cls, path: str | Path) -> EditChooser:
        """Read a chooser written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a chooser file (unreadable JSON, missing or misshapen
                fields), or its features are not this version's :data:`FEATURES`.
        """
        try:
            doc = json.loads(Path(path).read_text())
            features = tuple(doc.get("features", ()))
            arrays = [np.asarray(doc[k], np.float64) for k in ("mean", "scale", "weights")]
            tau = float(doc["tau"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not an edit chooser file ({type(exc).__name__}: {exc})") from None
        if features != FEATURES:
            raise ValueError(f"{path}: the chooser was fitted on other features than this version of ppd computes; "
                             "refit it (ppd.oneshot_quality.fit_chooser)")
        size = 2 * len(FEATURES) + 1
        if any(a.shape != (size,) or not np.isfinite(a).all() for a in arrays):
            raise ValueError(f"{path}: not an edit chooser file (mean, scale and weights must be {size} finite numbers)")
        return cls(*arrays, tau, doc.get("meta") or {})


def chooser_of_run(run: str | Path | None) -> tuple[EditChooser, bool]:
    """The edit chooser of a ``ppd train`` run (its folder, or the defender ``.zip`` in
    it): its :data:`CHOOSER_FILE` when it has one, else the bundled chooser; and whether
    it is the run's own. None: the bundled one."""
    if run is not None:
        folder = Path(run).parent if Path(run).suffix == ".zip" else Path(run)
        if (folder / CHOOSER_FILE).is_file():
            return EditChooser.load(folder / CHOOSER_FILE), True
    return load_chooser(), False


def load_chooser(path: str | Path | None = None) -> EditChooser:
    """The chooser at ``path`` (a file, or a run folder holding :data:`CHOOSER_FILE`);
    None: the bundled one (fitted for the bundled segmenter)."""
    if path is None:
        path = Path(__file__).parent / "assets" / "defender" / CHOOSER_FILE
    path = Path(path)
    return EditChooser.load(path / CHOOSER_FILE if path.is_dir() else path)


def _candidates(segmenter: Any, embedding: Any, ev: Evidence, sets: Sequence[tuple[np.ndarray, np.ndarray]]):
    """Per set: ``(features, mask, score, uncertainty or None)`` of SAM's mask
    (:func:`ppd.oneshot.decode_sets`: batched by set length)."""
    return [(mask_features(mask, score, logits, ev, lab), mask, score, unc)
            for (_, lab), (mask, score, logits, unc) in zip(sets, decode_sets(segmenter, embedding, list(sets)))]


def _scored_sets(segmenter, ref_image, ref_mask, image, coords, labels, extra, embedding=None):
    """The candidates (the single edits of the set, then ``extra``) and their
    :func:`_candidates` rows (``embedding``: the target's, else encoded, cached)."""
    embedding = segmenter.encode(image) if embedding is None else embedding
    ev = evidence_for(segmenter, ref_image, ref_mask, image, coords, labels, embedding)
    sets = single_edits(coords, labels) + [(np.asarray(c, np.float32).reshape(-1, 2), np.asarray(lab, np.int64))
                                           for c, lab in extra]
    return sets, _candidates(segmenter, embedding, ev, sets)


def _choose(segmenter, chooser, ref_image, ref_mask, image, coords, labels, extra):
    sets, scored = _scored_sets(segmenter, ref_image, ref_mask, image, coords, labels, extra)
    return sets, scored, chooser.pick(np.stack([s[0] for s in scored]))


def choose_edit(segmenter: Any, chooser: EditChooser, ref_image: np.ndarray, ref_mask: np.ndarray,
                image: np.ndarray, coords: np.ndarray, labels: np.ndarray,
                extra: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The candidate the chooser picks among the single edits of ``(coords, labels)``
    (:func:`single_edits`) and the ``extra`` sets (decoded batched by set length).

    Returns:
        ``(coords, labels, mask, index)``: the chosen set, its mask and its index among
        the candidates (0: the input set; then the edits, then ``extra``).
    """
    sets, scored, j = _choose(segmenter, chooser, ref_image, ref_mask, image, coords, labels, extra)
    return sets[j][0], sets[j][1], scored[j][1], j


def candidate_table(segmenter: Any, ref_image, ref_mask, image, gt, coords, labels,
                    extra: Sequence[tuple[np.ndarray, np.ndarray]] = (), embedding: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(features (F, D), IoU with gt (F,))`` of the single edits of a prompt set (and
    of the ``extra`` sets, after them): one fitting example of :meth:`EditChooser.fit`
    (``embedding``: the target's, when the caller holds it: no encode)."""
    from ppd.metrics import iou

    _, scored = _scored_sets(segmenter, ref_image, ref_mask, image, coords, labels, extra, embedding)
    return np.stack([s[0] for s in scored]), np.array([float(iou(s[1], gt)) for s in scored])


def fit_chooser(segmenter: Any, pairs: Iterable[Any], ridge: float = 10.0, tau: float = 0.02,
                tick: Callable[[], Any] | None = None, meta: dict | None = None) -> EditChooser:
    """Fit an :class:`EditChooser` for ``segmenter`` on one-shot pairs
    (:class:`ppd.data.oneshot_pairs.OneShotPair`: reference image and mask, target image
    and its ground truth), each prompted by :func:`ppd.oneshot.feature_matching` with its
    defaults. ``tick`` is called after each pair (progress)."""
    from ppd.oneshot import feature_matching

    tables = []
    for p in pairs:
        coords, labels = feature_matching(segmenter, p.reference.image, p.ref_mask, p.target.image)
        tables.append(candidate_table(segmenter, p.reference.image, p.ref_mask, p.target.image, p.target_mask,
                                      coords, labels))
        if tick is not None:
            tick()
    logger.info("fitted the edit chooser on %d pairs", len(tables))
    return EditChooser.fit(tables, ridge, tau, meta)


def refine_with_reference(refiner: Any, image: np.ndarray, coords: np.ndarray, labels: np.ndarray,
                          ref_image: np.ndarray, ref_mask: np.ndarray, chooser: EditChooser | None = None):
    """One-shot refinement: ``refiner`` (a :class:`~ppd.agents.defender.PromptDefender`
    or any refiner of :mod:`ppd.agents.baselines`) refines ``(coords, labels)``, then
    ``chooser`` (default: :func:`load_chooser`'s bundled one) picks among the input set,
    its single edits and the refiner's output, by what the reference says about each
    candidate's mask (module docstring). No ground truth.

    Returns:
        A :class:`~ppd.agents.refiner.RefineResult` over the input points; its ``trace``
        ends with the chooser's pick.
    """
    from ppd.agents.refiner import check_prompts, make_result

    coords, labels = check_prompts(coords, labels)
    chooser = load_chooser() if chooser is None else chooser
    res = refiner.refine(image, coords, labels)
    sets, scored, j = _choose(refiner.segmenter, chooser, ref_image, ref_mask, image, coords, labels,
                              [(res.point_coords, res.point_labels)])
    k = len(labels)
    if j == len(sets) - 1:
        return res.noted("reference choice: the refiner's output")
    kept, relabeled = np.ones(k, bool), np.zeros(k, bool)
    if j == 0:
        note = "reference choice: the input set"
    elif k > 1 and j <= k:
        kept[j - 1] = False
        note = f"reference choice: removed point {j - 1}"
    else:
        relabeled[j - 1 - (k if k > 1 else 0)] = True
        note = f"reference choice: flipped point {int(np.flatnonzero(relabeled)[0])}"
    _, mask, score, unc = scored[j]
    return make_result(coords, labels, kept, mask, score, int(j > 0), relabeled, uncertainty=unc, trace=[note])
