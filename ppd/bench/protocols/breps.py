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

All objects of an image whose start sets have the same number of points, and both
directions, are optimised together, one decoder forward and backward per step (``batch``;
off: one object and direction at a time, for timing comparisons; the same numbers up to the
decoder's float rounding). Sets of different lengths go in separate calls, unpadded: a
padding point is a token the decoder attends to, so padding would make an object's numbers
depend on the other objects of its image.

With ``attacker`` (a ``ppd train`` run folder holding ``attacker.zip``, or the file), the
run's DQN attacker attacks the same ideal start sets too (method ``dqn_attacker``,
:func:`ppd.robustness.dqn_attack.dqn_point_attack`): greedily, as in training, it
activates up to ``attacker_max_steps`` prompts on the graph's nodes; every set it visits
is scored as BREPS scores its sets and the lowest IoU along the way, the start included,
is kept. Rows ``iou_base_points`` (the start set on the graph: points sharing a patch
merge, so it can differ from BREPS's start on small objects), ``iou_min_points`` and
``iou_delta_points`` = base - min (the attacker only attacks: there is no best case, so
no ``iou_max_points``), condition ``clean``; example: the worst set. The attacker must act
on the model's graph grid (:func:`ppd.robustness.dqn_attack.check_attacker`), else the run
stops before any unit with the reason. :meth:`BrepsProtocol.aggregates` sets the two
attacks side by side per model and domain (mean IoU-Min@Points, and IoU-Base - IoU-Min
for both), and the figures add their IoU-Min@Points per domain.
"""

from __future__ import annotations

from typing import Any
from dataclasses import dataclass, field

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol, measured_objects
from ppd.bench.schema import Example, Row, Unit, UnitResult, encode_mask, prompt_points

PROMPT_KINDS = ("box", "points")
#: Method of the DQN attacker's rows (``attacker``).
DQN_METHOD = "dqn_attacker"
#: Its metrics: it only attacks, so there is no best case.
DQN_METRICS = ("iou_base_points", "iou_min_points", "iou_delta_points")
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
                                "per step (off: one object and direction at a time) (default: on)"})
    attacker: str = field(
        default="", metadata={"help": "a ppd train run folder holding attacker.zip (or the file): its DQN attacker "
                              "attacks the same ideal sets, method dqn_attacker, beside BREPS's point attack "
                              "(default: none)"})

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

    def __init__(self, config: BrepsConfig | None = None) -> None:
        super().__init__(config)
        kinds = [k for k in PROMPT_KINDS if k in self.config.prompts]
        self.table_metrics = tuple(m for k in kinds for m in METRICS[k])
        if self.config.attacker and "points" not in kinds:
            self.table_metrics += DQN_METRICS
        self.example_metric = "iou_min_bbox" if "box" in kinds else "iou_min_points"
        dqn = ("; method dqn_attacker: the trained DQN attacker's worst case from the same ideal set"
               if self.config.attacker else
               "; the DQN attacker's worst case beside it (method dqn_attacker) is not measured: add --attacker RUN "
               "(a ppd train run folder holding attacker.zip)")
        self.descriptions = {
            "iou_base_points": "mean IoU of the start point set (ideal: 6 + 6 lattice points; coarse: "
                               "ppd.prompts.coarse_prompts)",
            "iou_min_points": "mean IoU of the worst realistic point set found from the start (BREPS: Adam under the "
                              "Gaussian displacement prior)" + dqn,
            "iou_max_points": "mean IoU of the best realistic point set found from the start (BREPS)",
            "iou_delta_points": "mean IoU-Delta: max - min for BREPS, base - min for dqn_attacker (it only attacks)",
        }

    def validate(self, models: dict[str, dict[str, Any]]) -> None:
        """A given ``attacker`` must be a readable attacker (its grid is checked against
        each model when the model is loaded)."""
        if self.config.attacker:
            from ppd.robustness.dqn_attack import check_attacker_option

            check_attacker_option(self.config.attacker)

    def prepare(self, model: BenchModel) -> dict[str, Any]:
        """The ``attacker``, loaded once per model and checked against its graph grid
        (:class:`~ppd.robustness.dqn_attack.AttackerError` otherwise)."""
        if not self.config.attacker:
            return {}
        from ppd.robustness.dqn_attack import check_attacker, load_attacker

        attacker = load_attacker(self.config.attacker, device=str(model.segmenter.device))
        check_attacker(attacker, model.segmenter, f"model {model.name}")
        return {"attacker": attacker}

    def aggregates(self, results: Any) -> dict[str, Any]:
        """BREPS's point attack and the DQN attacker side by side from the same ideal
        sets, per ``model/domain`` (:func:`point_attack_comparison`)."""
        return point_attack_comparison(results)

    def figures(self, results: Any, fig_dir: Any, load_scene: Any, examples: list) -> dict[str, tuple[Any, str]]:
        from ppd.bench.protocols.breps_figures import breps_figures

        captions = {"box_attack": "Objects with the largest IoU-Delta: the start box, the worst and the best realistic "
                                  "box BREPS found, with their masks.",
                    "delta": "IoU-Delta (best minus worst realistic prompt; base minus worst for the DQN attacker) "
                             "per domain.",
                    "points_min": "A gradient attack and a learned one on the same objects: mean IoU-Min@Points per "
                                  "domain of BREPS's point attack and of the trained DQN attacker, both from the ideal "
                                  "set (the dots: the start's mean IoU)."}
        return {kind: (path, captions[kind]) for kind, path in breps_figures(fig_dir, results, examples, load_scene).items()}

    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        from ppd.prompts import coarse_prompts, ideal_prompts
        from ppd.robustness.breps import box_attack, point_attack

        cfg = self.config
        seg = model.segmenter
        care, gts, objects = measured_objects(scene)
        valid = None if scene.meta.get("void") is None else care
        attacker = (resources or {}).get("attacker")
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
        opts = dict(steps=cfg.steps, lam=cfg.lam, lr_mult=cfg.lr_mult, batch=cfg.batch, valid=valid)
        if "box" in cfg.prompts:
            res = box_attack(seg, emb, gts, **opts)
            base, lo, hi, delta = METRICS["box"]
            for j, obj in enumerate(objects):
                values = (res.iou_base[j], res.iou_min[j], res.iou_max[j], res.iou_delta[j])
                result.rows += [Row("breps", obj, m, float(v)) for m, v in zip(METRICS["box"], values)]
                for metric, v, box, mask in ((base, res.iou_base[j], res.start[j], res.base_mask[j]),
                                             (lo, res.iou_min[j], res.worst[j], res.worst_mask[j]),
                                             (hi, res.iou_max[j], res.best[j], res.best_mask[j])):
                    result.examples.append(Example("breps", obj, metric, float(v), [], encode_mask(mask),
                                                   box=[float(c) for c in box]))
        for name, (coords, labels) in starts.items():
            method = POINT_METHODS[name]
            # sets of equal length together, unpadded (see the module docstring)
            for k in sorted({len(lab) for lab in labels}):
                js = [j for j, lab in enumerate(labels) if len(lab) == k]
                res = point_attack(seg, emb, gts[js], [coords[j] for j in js], [labels[j] for j in js],
                                   sigma=cfg.point_sigma, **opts)
                for r, j in enumerate(js):
                    values = (res.iou_base[r], res.iou_min[r], res.iou_max[r], res.iou_delta[r])
                    result.rows += [Row(method, objects[j], m, float(v)) for m, v in zip(METRICS["points"], values)]
                    result.examples.append(Example(method, objects[j], "iou_min_points", float(res.iou_min[r]),
                                                   prompt_points(res.worst[r], res.labels[r]),
                                                   encode_mask(res.worst_mask[r])))
        if attacker is not None:
            from ppd.robustness.dqn_attack import dqn_point_attack

            coords, labels = starts["ideal"] if "ideal" in starts else zip(*[
                (s.point_coords, s.point_labels) for s in (ideal_prompts(g, n_pos=6, n_neg=6) for g in gts)])
            res = dqn_point_attack(seg, attacker, scene.image, gts, list(coords), list(labels), valid=valid)
            for j, obj in enumerate(objects):
                values = (res.iou_base[j], res.iou_min[j], res.iou_delta[j])
                result.rows += [Row(DQN_METHOD, obj, m, float(v)) for m, v in zip(DQN_METRICS, values)]
                result.examples.append(Example(DQN_METHOD, obj, "iou_min_points", float(res.iou_min[j]),
                                               prompt_points(res.worst_coords[j], res.worst_labels[j]),
                                               encode_mask(res.worst_mask[j])))
        return result


def point_attack_comparison(results: Any) -> dict[str, dict[str, Any]]:
    """BREPS's point attack (method ``breps``, from the ideal set) beside the DQN
    attacker (``dqn_attacker``, from the same sets), per ``model/domain`` of a results
    table (rows of other protocols ignored; domain ``all`` pools the domains).

    Returns:
        ``{"model/domain": {"objects", "iou_base_points", "iou_min_points_breps",
        "iou_min_points_dqn_attacker", "drop_breps", "drop_dqn_attacker"}}``: the start's
        mean IoU (BREPS's), each attack's mean IoU-Min@Points and its mean drop from its own
        start (IoU-Base - IoU-Min); the DQN attacker's values are None when not measured.
        Objects: those BREPS measured from the ideal set.
    """
    df = results
    if "protocol" in df.columns:
        df = df[df["protocol"] == BrepsProtocol.name]
    df = df[df["method"].isin(["breps", DQN_METHOD]) & df["metric"].isin(["iou_base_points", "iou_min_points"])]
    out: dict[str, dict[str, Any]] = {}
    for model, part in df.groupby("model", sort=True):
        for domain, rows in [(d, p) for d, p in part.groupby("domain", sort=True)] + [("all", part)]:
            means = rows.groupby(["method", "metric"])["value"].mean()
            if ("breps", "iou_min_points") not in means.index:
                continue

            def mean(method: str, metric: str) -> float | None:
                return float(means[(method, metric)]) if (method, metric) in means.index else None

            row: dict[str, Any] = {
                "objects": int(((rows["method"] == "breps") & (rows["metric"] == "iou_min_points")).sum()),
                "iou_base_points": mean("breps", "iou_base_points"),
            }
            for method in ("breps", DQN_METHOD):
                lo, base = mean(method, "iou_min_points"), mean(method, "iou_base_points")
                row[f"iou_min_points_{method}"] = lo
                row[f"drop_{method}"] = None if lo is None or base is None else base - lo
            out[f"{model}/{domain}"] = row
    return out
