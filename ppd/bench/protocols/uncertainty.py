"""The uncertainty protocol: RUAC's 3-click protocol, segmentation and uncertainty metrics.

Clicks (:mod:`ppd.ruac.evaluation`, as RUAC's code): click 1 on a ground-truth pixel drawn
uniformly, clicks 2 and 3 into the larger error region of the current prediction
(:func:`~ppd.ruac.evaluation.protocol_click`, at least
:data:`~ppd.ruac.evaluation.MIN_CLICK_SEPARATION` px from the earlier clicks). They are
derived with the model's base decoder (``model.base``, SAM2's own) from the unit's random
stream, so a model with a RUAC head and the same network without one see identical clicks;
without void pixels they are exactly
:func:`~ppd.ruac.evaluation.three_click_protocol`'s for a seed drawn from that stream. All
objects of an image are clicked together, one decoder call per click.

Methods, each scored on its single-mask prediction from all the clicks
(:func:`~ppd.ruac.evaluation.predict_maps`): ``entropy`` (the base decoder; uncertainty =
its normalised binary entropy), and with a RUAC head ``ruac`` (the head's analytic
uncertainty, MacKay's probit probability) and, with ``mc_samples`` > 0, ``ruac_mc`` (the
head's sampled uncertainty, its draws seeded from the unit's stream).

Rows per object and method: ``j_and_f``, ``iou``, ``pavpu`` (thresholds 0.01/0.05/0.1),
``aurc`` and ``e_aurc`` (pixels ranked by ``1 - uncertainty``), ``ece`` (15 bins),
``auroc`` (of the uncertainty for the error pixels) and ``pearson`` (uncertainty vs error;
both nan for an object whose prediction has no error, or only errors). RUAC's paper pools
the pixels of all objects of a domain for the pixel metrics; here every metric is per
object, and the tables show their mean over objects (the tidy table holds one value per
object; pooled values weigh large objects more, so the two differ). The pooled
calibration and risk-coverage survive as histograms summed over objects: ``rel_count@b``,
``rel_conf@b``, ``rel_hit@b`` (pixels, sum of foreground probabilities, foreground pixels
in bin b of 15 equal-width bins of the foreground probability: the reliability diagram)
and ``rc_count@b``, ``rc_hit@b`` (pixels and correctly segmented pixels in bin b of 20
equal-width bins of the confidence ``1 - uncertainty``: the risk-coverage curve).

Void pixels (``scene.meta["void"]``) count in no metric and receive no click; a prediction
there is no error. Examples: per object the mask of the head's method (``ruac``) or, without
a head, of ``entropy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol
from ppd.bench.schema import Example, Row, Unit, UnitResult, encode_mask, prompt_points

#: Bins of the reliability diagram (foreground probability) and of the risk-coverage
#: histogram (confidence), equal-width over [0, 1].
RELIABILITY_BINS = 15
RISK_COVERAGE_BINS = 20
#: Per-object metrics, in table order.
METRICS = ("j_and_f", "iou", "pavpu", "aurc", "e_aurc", "ece", "auroc", "pearson")


@dataclass
class UncertaintyConfig:
    mc_samples: int = field(
        default=0,
        metadata={"help": "with a RUAC head, also score its Monte-Carlo uncertainty from this many samples as method "
                  "ruac_mc (default 0: off; RUAC's paper uses 20)"},
    )
    clicks: int = field(default=3, metadata={"help": "clicks per object (default 3, RUAC's protocol)"})

    def __post_init__(self) -> None:
        if self.mc_samples < 0:
            raise ValueError(f"mc_samples must be >= 0, got {self.mc_samples}")
        if self.clicks < 1:
            raise ValueError(f"clicks must be >= 1, got {self.clicks}")


class UncertaintyProtocol(Protocol):
    name = "uncertainty"
    Config = UncertaintyConfig
    title = "Uncertainty (RUAC's 3-click protocol)"
    table_metrics = METRICS
    lower_is_better = frozenset({"aurc", "e_aurc", "ece"})
    example_metric = "iou"
    reliability = "rel_"
    risk_coverage = "rc_"

    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        from ppd.metrics import iou
        from ppd.ruac.evaluation import predict_maps

        void = scene.meta.get("void")
        care = np.ones(scene.masks.shape[1:], bool) if void is None else ~np.asarray(void, bool)
        gts = np.asarray(scene.masks, bool) & care
        objs = [i for i, gt in enumerate(gts) if gt.any()]
        result = UnitResult()
        if not objs:
            return result
        emb = model.base.encode(scene.image)
        click_seed = int(rng.integers(2**63))  # the clicks come first: the same for every model
        coords, labels = protocol_clicks(model.base, emb, gts[objs], care, click_seed, self.config.clicks)
        methods = [("entropy", model.base, None, "base")]
        if model.has_head:
            head = model.segmenter.ruac_head
            methods.append(("ruac", model.segmenter, head, "analytic"))
            if self.config.mc_samples > 0:
                methods.append(("ruac_mc", model.segmenter, head, "mc"))
        mc_seed = int(rng.integers(2**31))
        shown = "ruac" if model.has_head else "entropy"
        for method, seg, head, mode in methods:
            prob, unc = predict_maps(seg, head, emb, coords, labels, mode, max(self.config.mc_samples, 1), mc_seed)
            for r, obj in enumerate(objs):
                for metric, value in object_metrics(prob[r], unc[r], gts[obj], care).items():
                    result.rows.append(Row(method, obj, metric, value))
                if method == shown:
                    mask = (prob[r] > 0.5) & care
                    result.examples.append(Example(method, obj, "iou", float(iou(mask, gts[obj])),
                                                   prompt_points(coords[r], labels[r]), encode_mask(mask)))
        return result


def protocol_clicks(
    seg, emb, gts: np.ndarray, care: np.ndarray, seed: int, n_clicks: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """RUAC's clicks on the objects ``gts`` (B, H, W) of one encoded image, all objects in
    one decoder call per click: ``(coords (B, K, 2) float32, labels (B, K) int64)``,
    padded with label -1 for an object whose prediction became exact earlier.

    Click 1 of object j comes from ``np.random.default_rng([seed, 0, j])`` and every next
    one from ``seg``'s prediction, restricted to ``care`` (no error, no click in void): with
    ``care`` everywhere, the clicks of :func:`ppd.ruac.evaluation.three_click_protocol` on
    this one image with ``seed``. Written out here because that function has no void mask.
    """
    from ppd.ruac.evaluation import MIN_CLICK_SEPARATION, first_click, protocol_click

    pts = [first_click(gt, np.random.default_rng([seed, 0, j]))[None] for j, gt in enumerate(gts)]
    lab = [np.ones(1, np.int64) for _ in gts]
    active = list(range(len(gts)))
    for k in range(1, n_clicks):
        if not active:
            break
        masks = seg.predict(emb, np.stack([pts[a] for a in active]), np.stack([lab[a] for a in active]),
                            multimask=(k == 1)).masks
        still = []
        for a, m in zip(active, masks):
            c = protocol_click(np.asarray(m, bool) & care, gts[a], pts[a], MIN_CLICK_SEPARATION)
            if c is None:
                continue
            pts[a] = np.concatenate([pts[a], c[0][None]])
            lab[a] = np.concatenate([lab[a], [c[1]]])
            still.append(a)
        active = still
    k = max(len(p) for p in pts)
    coords = np.zeros((len(gts), k, 2), np.float32)
    labels = -np.ones((len(gts), k), np.int64)
    for r, (p, lb) in enumerate(zip(pts, lab)):
        coords[r, : len(p)], labels[r, : len(lb)] = p, lb
    return coords, labels


def object_metrics(prob: np.ndarray, unc: np.ndarray, gt: np.ndarray, care: np.ndarray | None = None) -> dict[str, float]:
    """The rows of one object (module docstring): :data:`METRICS` and the reliability
    (``rel_``) and risk-coverage (``rc_``) histograms, on the pixels in ``care``.

    Args:
        prob, unc: (H, W) foreground probability and uncertainty in [0, 1]; the mask is
            ``prob > 0.5``.
        gt: (H, W) bool object mask.
        care: (H, W) bool pixels that count (None: all).

    Without void, the values of :data:`METRICS` are those of
    :func:`ppd.ruac.evaluation.pixel_metrics` on this one object.
    """
    from ppd.metrics import aurc, e_aurc, ece, iou, j_and_f, pavpu, uncertainty_auroc, uncertainty_error_pearson

    care = np.ones(gt.shape, bool) if care is None else np.asarray(care, bool)
    gt = np.asarray(gt, bool) & care
    mask = (prob > 0.5) & care
    p, u, g = prob[care], unc[care], gt[care]
    error = (p > 0.5) != g
    mixed = bool(error.any() and not error.all())
    out = {
        "j_and_f": float(j_and_f(mask, gt)),
        "iou": float(iou(mask, gt)),
        "pavpu": float(pavpu(p[None], u[None], g[None])),  # (1, N): pixel-level windows, as pixel_metrics
        "aurc": float(aurc(1.0 - u, ~error)),
        "e_aurc": float(e_aurc(1.0 - u, ~error)),
        "ece": float(ece(p, g)),
        "auroc": float(uncertainty_auroc(u, error)) if mixed else float("nan"),
        "pearson": float(uncertainty_error_pearson(u, error.astype(np.float32))) if mixed else float("nan"),
    }
    # np.histogram: equal-width bins over [0, 1], the last one closed (a probability of 1 counts)
    count, _ = np.histogram(p, RELIABILITY_BINS, (0.0, 1.0))
    conf, _ = np.histogram(p, RELIABILITY_BINS, (0.0, 1.0), weights=p)
    hit, _ = np.histogram(p, RELIABILITY_BINS, (0.0, 1.0), weights=g.astype(np.float64))
    for b in range(RELIABILITY_BINS):
        out[f"rel_count@{b}"], out[f"rel_conf@{b}"], out[f"rel_hit@{b}"] = float(count[b]), float(conf[b]), float(hit[b])
    count, _ = np.histogram(1.0 - u, RISK_COVERAGE_BINS, (0.0, 1.0))
    hit, _ = np.histogram(1.0 - u, RISK_COVERAGE_BINS, (0.0, 1.0), weights=(~error).astype(np.float64))
    for b in range(RISK_COVERAGE_BINS):
        out[f"rc_count@{b}"], out[f"rc_hit@{b}"] = float(count[b]), float(hit[b])
    return out

