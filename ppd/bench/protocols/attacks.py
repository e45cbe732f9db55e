"""The attacks protocol: IoU under adversarial image attacks with fixed prompts, and ReM.

Per image, the prompts of every object are fixed on the clean image: its first click
(:func:`ppd.prompts.farthest_click`, decoded keeping the best of SAM2's three masks, as
the click protocol's first click) and its ideal set (:func:`ppd.prompts.ideal_prompts`
with 6 positives and 6 negatives, one mask). Prompt sets of equal length are decoded
together, unpadded: a padding point is a token the decoder attends to, and an object's
mask for given prompts should not depend on its neighbours.

Each attack of ``attacks`` (:data:`ppd.robustness.attacks.ATTACKS`: PGD, SegPGD and
CosPGD under L-inf and L2) perturbs the image once for all its objects and both prompt
kinds (the sum of their losses, :func:`ppd.robustness.attacks.run_attack`), through the
whole model (image encoder and mask decoder, a RUAC head included); the attacked image is
scored with the same prompts. SemSegBench's threat models, on images in [0, 255]: L-inf
eps 8 (8/255 of the range), step 2.55 (0.01 x 255); L2 eps 64, step 25.5 (0.1 x 255);
20 iterations from a random start. The random starts come from the unit's stream, one
seed per attack name drawn in :data:`~ppd.robustness.attacks.ATTACKS` order whatever
``attacks`` holds, so an attack gives the same numbers alone or among others.

Rows per object, method ``fixed_prompts``: ``iou`` (first click) and ``iou_ideal`` (ideal
set), under the condition ``clean`` and under each attack (its name, ``pgd_linf`` ...).
Void pixels (``scene.meta["void"]``) count neither way, in the metrics nor in the attack's
loss. Examples: per object, the first click's mask under the first attack.

:func:`rem` aggregates a results table into SemSegBench's Reliability Measure: the worst
attack's mean IoU, and the mean over the attacks beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol, measured_objects
from ppd.bench.schema import CLEAN, Example, Row, Unit, UnitResult, encode_mask, prompt_points

#: The attack names (``ppd.robustness.attacks.ATTACKS``; written out so that importing
#: this module imports no torch).
ATTACK_NAMES = ("pgd_linf", "pgd_l2", "segpgd_linf", "segpgd_l2", "cospgd_linf", "cospgd_l2")
METHOD = "fixed_prompts"
#: Points of the ideal set: positives, negatives.
IDEAL_POS, IDEAL_NEG = 6, 6


@dataclass
class AttacksConfig:
    attacks: list[str] = field(
        default_factory=lambda: list(ATTACK_NAMES),
        metadata={"help": "attacks to run, each a condition: pgd_linf, pgd_l2, segpgd_linf, segpgd_l2, cospgd_linf, "
                  "cospgd_l2 (default: all six)"},
    )
    iterations: int = field(default=20, metadata={"help": "gradient steps per attack (default 20)"})
    eps_linf: float = field(
        default=8.0, metadata={"help": "L-inf radius on images in [0, 255] (default 8, i.e. 8/255 of the range)"})
    alpha_linf: float = field(
        default=2.55, metadata={"help": "L-inf step on images in [0, 255] (default 2.55, SemSegBench's 0.01 x 255)"})
    eps_l2: float = field(default=64.0, metadata={"help": "L2 radius on images in [0, 255] (default 64)"})
    alpha_l2: float = field(
        default=25.5, metadata={"help": "L2 step on images in [0, 255] (default 25.5, SemSegBench's 0.1 x 255)"})

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACK_NAMES]
        if unknown:
            raise ValueError(f"unknown attack {unknown[0]!r}; known attacks: {', '.join(ATTACK_NAMES)}")
        if not self.attacks or len(set(self.attacks)) < len(self.attacks):
            raise ValueError(f"attacks must be distinct names, got {self.attacks}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        for name in ("eps_linf", "eps_l2"):
            if not getattr(self, name) >= 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("alpha_linf", "alpha_l2"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")


class AttacksProtocol(Protocol):
    name = "attacks"
    Config = AttacksConfig
    title = "Adversarial image attacks (fixed prompts)"
    table_metrics = ("iou", "iou_ideal")
    descriptions = {
        "iou": "mean IoU of the mask from the object's first click (its deepest pixel), fixed on the clean image",
        "iou_ideal": "mean IoU of the mask from the object's ideal set (up to 6 positive and 6 negative lattice "
                     "points), fixed on the clean image",
    }
    example_metric = "iou"
    quick = {"attacks": ["pgd_linf", "cospgd_l2"], "iterations": 2}  # keeps --quick within minutes

    def aggregates(self, results: Any) -> dict[str, Any]:
        """ReM (the worst attack's mIoU) with the mean over attacks and the clean mIoU
        beside it, per ``model/domain``, for the first click (``rem``) and the ideal set
        (``rem_ideal``)."""
        out: dict[str, Any] = {}
        for metric, prefix in (("iou", "rem"), ("iou_ideal", "rem_ideal")):
            for model, domains in rem(results, metric).items():
                for domain, v in domains.items():
                    row = out.setdefault(f"{model}/{domain}", {})
                    row.update({prefix: v["rem"], f"{prefix}_attack": v["worst"], f"{prefix}_mean": v["mean"],
                                f"{prefix}_clean": v["clean"]})
        return out

    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        from ppd.metrics import iou
        from ppd.prompts import farthest_click, ideal_prompts, stack_prompts
        from ppd.robustness.attacks import PromptGroup, named_attack, run_attack

        cfg, seg = self.config, model.segmenter
        seeds = {name: int(rng.integers(2**63)) for name in ATTACK_NAMES}
        care, gts, objs = measured_objects(scene)
        result = UnitResult()
        if not objs:
            return result
        # Prompt sets of equal length share a decoder call: a padding point (label -1) is a
        # token the decoder attends to, so padding would make an object's mask depend on
        # the other objects of its image.
        groups, where = [], []  # where: (kind, positions in objs) of each group's rows
        for kind, sets, multimask in (("iou", [farthest_click(gts[i]) for i in objs], True),
                                      ("iou_ideal", [ideal_prompts(gts[i], n_pos=IDEAL_POS, n_neg=IDEAL_NEG)
                                                     for i in objs], False)):
            for k in sorted({len(p) for p in sets}):
                rows = [r for r, p in enumerate(sets) if len(p) == k]
                groups.append(PromptGroup(*stack_prompts([sets[r] for r in rows]), gts[[objs[r] for r in rows]],
                                          multimask))
                where.append((kind, rows))

        def score(image: np.ndarray, condition: str, example: bool) -> None:
            for group, (metric, rows) in zip(groups, where):
                masks = seg.predict(image, group.point_coords, group.point_labels, multimask=group.multimask).masks
                for j, r in enumerate(rows):
                    obj = objs[r]
                    mask = np.asarray(masks[j], bool) & care
                    value = float(iou(mask, gts[obj]))
                    result.rows.append(Row(METHOD, obj, metric, value, condition))
                    if example and metric == "iou":
                        result.examples.append(Example(METHOD, obj, "iou", value,
                                                       prompt_points(group.point_coords[j], group.point_labels[j]),
                                                       encode_mask(mask), condition=condition))

        score(scene.image, CLEAN, False)
        for k, name in enumerate(cfg.attacks):
            attack = named_attack(name, cfg.iterations, cfg.eps_linf, cfg.eps_l2, cfg.alpha_linf, cfg.alpha_l2)
            adv = run_attack(seg, scene.image, groups, attack, seeds[name], care)
            score(adv.as_float(), name, k == 0)
        return result


def rem(results: Any, metric: str = "iou") -> dict[str, dict[str, dict[str, Any]]]:
    """SemSegBench's Reliability Measure per model and domain, from a results table.

    Args:
        results: a DataFrame with the columns of :data:`ppd.bench.schema.COLUMNS` (rows of
            other protocols are ignored; without a ``protocol`` column all rows are used).
        metric: ``iou`` (first click) or ``iou_ideal`` (ideal set).

    Returns:
        ``{model: {domain: {"rem", "worst", "mean", "clean", "attacks"}}}``: ``rem`` the
        lowest mean ``metric`` over the attacks (each attack's mean over the domain's
        objects), ``worst`` the attack giving it, ``mean`` the mean of the attacks' means,
        ``clean`` the clean mean (nan when absent) and ``attacks`` each attack's mean.
        Domain ``"all"`` pools the objects of all domains. Models or domains with no
        attacked row are left out.
    """
    df = results
    if "protocol" in df.columns:
        df = df[df["protocol"] == AttacksProtocol.name]
    df = df[df["metric"] == metric]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, part in df.groupby("model", sort=True):
        domains = [(d, p) for d, p in part.groupby("domain", sort=True)] + [("all", part)]
        for domain, rows in domains:
            means = rows.groupby("condition")["value"].mean()
            attacked = {c: float(v) for c, v in means.items() if c != CLEAN}
            if not attacked:
                continue
            worst = min(attacked, key=lambda c: (attacked[c], c))
            out.setdefault(str(model), {})[str(domain)] = {
                "rem": attacked[worst],
                "worst": worst,
                "mean": float(np.mean(list(attacked.values()))),
                "clean": float(means.get(CLEAN, float("nan"))),
                "attacks": attacked,
            }
    return out
