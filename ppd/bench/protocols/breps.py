"""The breps protocol: how far IoU moves when a realistic box or point prompt moves (BREPS).

Per object, :mod:`ppd.robustness.breps` attacks the prompt twice from the same start,
once for the worst and once for the best realistic prompt (Adam on the prompt's
coordinates through the frozen prompt encoder and mask decoder, under a realism prior),
keeping the extreme IoU seen along each trajectory, the start included:

* box: from the tight ground-truth box, under BREPS's Gamma prior on the complete-IoU
  loss to the start box (lambda = 0.1);
* points: from the ideal set (:func:`ppd.prompts.ideal_prompts`, 6 positives and 6
  negatives) and from a coarse set (:func:`ppd.prompts.coarse_prompts`, drawn from the
  unit's random stream), under a Gaussian prior on each point's displacement scaled to
  the object's size (see :mod:`ppd.robustness.breps` for the prior and why).

Rows per object, condition ``clean``: ``iou_base_bbox`` (the tight box's IoU),
``iou_min_bbox``, ``iou_max_bbox``, ``iou_delta_bbox`` (max - min) with method
``breps``; ``iou_base_points``, ``iou_min_points``, ``iou_max_points``,
``iou_delta_points`` with method ``breps`` for the ideal set and ``breps_coarse`` for the
coarse set. Void pixels (``scene.meta["void"]``) count neither way. Examples per object:
the start, the worst and the best box with their masks (metrics ``iou_base_bbox``,
``iou_min_bbox``, ``iou_max_bbox``) and the worst point set (``iou_min_points``).

All objects of an image and both directions are optimised together, one decoder forward
and backward per step (``batch``; off: one object and direction at a time, for timing
comparisons; the same numbers up to the decoder's float rounding).
"""

from __future__ import annotations

from typing import Any
from dataclasses import dataclass, field

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol
from ppd.bench.schema import Example, Row, Unit, UnitResult, encode_mask, prompt_points

PROMPT_KINDS = ("box", "points")
POINT_SETS = ("ideal", "coarse")
#: Method name of each point set (the box attack is always ``breps``).
POINT_METHODS = {"ideal": "breps", "coarse": "breps_coarse"}
METRICS = {kind: tuple(f"iou_{m}_{suffix}" for m in ("base", "min", "max", "delta"))
           for kind, suffix in (("box", "bbox"), ("points", "points"))}


@dataclass
class BrepsConfig:
    steps: int = field(default=50, metadata={"help": "Adam steps per attack and direction (default 50)"})
    lam: float = field(default=0.1, metadata={"help": "weight lambda of the realism prior (default 0.1, BREPS's)"})
    prompts: list[str] = field(
        default_factory=lambda: list(PROMPT_KINDS),
        metadata={"help": "prompt kinds to attack: box (from the tight box), points (default box points)"},
    )
    point_sets: list[str] = field(
        default_factory=lambda: list(POINT_SETS),
        metadata={"help": "start sets of the point attack: ideal (6 + 6 lattice points, method breps), coarse "
                  "(ppd.prompts.coarse_prompts, method breps_coarse) (default ideal coarse)"},
    )
    point_sigma: float = field(
        default=0.1, metadata={"help": "the point prior's standard deviation per axis, in units of sqrt(object "
                               "area) (default 0.1)"})
    lr_mult: float = field(
        default=9.0, metadata={"help": "learning rate multiplier: lr = lr_mult * image diagonal / (1024 sqrt 2) "
                               "pixels (default 9, BREPS's)"})
    batch: bool = field(
        default=True, metadata={"help": "optimise all objects of an image and both directions in one decoder call "
                                "per step (off: one object and direction at a time)"})

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if self.point_sigma <= 0 or self.lr_mult <= 0:
            raise ValueError(f"point_sigma and lr_mult must be > 0, got {self.point_sigma} and {self.lr_mult}")
        for name, given, known in (("prompts", self.prompts, PROMPT_KINDS), ("point_sets", self.point_sets, POINT_SETS)):
            unknown = [g for g in given if g not in known]
            if unknown or not given or len(set(given)) < len(given):
                raise ValueError(f"{name} must be distinct names out of {', '.join(known)}, got {given}")


class BrepsProtocol(Protocol):
    name = "breps"
    Config = BrepsConfig
    title = "Prompt robustness (BREPS attacks on boxes and points)"
    table_metrics = METRICS["box"] + METRICS["points"]
    lower_is_better = frozenset({"iou_delta_bbox", "iou_delta_points"})
    example_metric = "iou_min_bbox"
    quick = {"steps": 5, "point_sets": ["ideal"]}

    def figures(self, results: Any, fig_dir: Any, load_scene: Any, examples: list) -> dict[str, tuple[Any, str]]:
        from ppd.bench.protocols.breps_figures import breps_figures

        captions = {"box_attack": "Objects with the largest IoU-Delta: the start box, the worst and the best realistic "
                                  "box BREPS found, with their masks.",
                    "delta": "IoU-Delta (best minus worst realistic prompt) per domain."}
        return {kind: (path, captions[kind]) for kind, path in breps_figures(fig_dir, results, examples, load_scene).items()}

    def __init__(self, config: BrepsConfig | None = None) -> None:
        super().__init__(config)
        kinds = [k for k in PROMPT_KINDS if k in self.config.prompts]
        self.table_metrics = tuple(m for k in kinds for m in METRICS[k])
        self.example_metric = "iou_min_bbox" if "box" in kinds else "iou_min_points"

    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        from ppd.prompts import coarse_prompts, ideal_prompts
        from ppd.robustness.breps import box_attack, point_attack

        cfg = self.config
        seg = model.segmenter
        void = scene.meta.get("void")
        care = None if void is None else ~np.asarray(void, bool)
        gts = np.asarray(scene.masks, bool) if care is None else np.asarray(scene.masks, bool) & care
        objects = [i for i, g in enumerate(gts) if g.any()]
        result = UnitResult()
        if not objects:
            return result
        gts = gts[objects]
        # the coarse sets first, in object order: the unit's stream alone fixes them
        starts = {}
        if "points" in cfg.prompts:
            for name in cfg.point_sets:
                sets = [ideal_prompts(g, n_pos=6, n_neg=6) if name == "ideal" else coarse_prompts(g, rng).prompts
                        for g in gts]
                starts[name] = ([s.point_coords for s in sets], [s.point_labels for s in sets])
        emb = seg.encode(scene.image)
        opts = dict(steps=cfg.steps, lam=cfg.lam, lr_mult=cfg.lr_mult, batch=cfg.batch, valid=care)
        attacks = []
        if "box" in cfg.prompts:
            attacks.append(("breps", "box", box_attack(seg, emb, gts, **opts)))
        for name, (coords, labels) in starts.items():
            attacks.append((POINT_METHODS[name], "points",
                            point_attack(seg, emb, gts, coords, labels, sigma=cfg.point_sigma, **opts)))
        for method, kind, res in attacks:
            base, lo, hi, delta = METRICS[kind]
            for j, obj in enumerate(objects):
                values = (res.iou_base[j], res.iou_min[j], res.iou_max[j], res.iou_delta[j])
                result.rows += [Row(method, obj, metric, float(v)) for metric, v in zip((base, lo, hi, delta), values)]
                if kind == "box":
                    for metric, v, box, mask in ((base, res.iou_base[j], res.start[j], res.base_mask[j]),
                                                 (lo, res.iou_min[j], res.worst[j], res.worst_mask[j]),
                                                 (hi, res.iou_max[j], res.best[j], res.best_mask[j])):
                        result.examples.append(Example(method, obj, metric, float(v), [], encode_mask(mask),
                                                       box=[float(c) for c in box]))
                else:
                    result.examples.append(Example(method, obj, lo, float(res.iou_min[j]),
                                                   prompt_points(res.worst[j], res.labels[j]),
                                                   encode_mask(res.worst_mask[j])))
        return result
