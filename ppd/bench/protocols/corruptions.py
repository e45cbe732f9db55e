"""The corruptions protocol: fixed prompts on images under the 15 common corruptions, GAM.

Per object the prompts come from the clean ground truth and stay fixed: the first click
of the click protocol (the object pixel farthest from its boundary,
:func:`ppd.prompts.farthest_click`, best of SAM2's three masks by predicted IoU) and the
ideal set (:func:`ppd.prompts.ideal_prompts` with 6 positives and 6 negatives, one mask).
The image is corrupted (:func:`ppd.robustness.corrupt`) under every selected corruption
and severity, encoded, and every object predicted, all objects of an image in one decoder
call per prompt kind. The corruption of condition (c, s) draws from
``np.random.default_rng([seed, i, s])`` with ``seed`` the unit's first draw and i the
corruption's index in :data:`~ppd.robustness.corruptions.CORRUPTIONS`: a condition's
image is the same whichever others are selected.

Method ``fixed_prompts``; conditions ``clean`` and ``NAME/SEVERITY`` (``gaussian_noise/3``);
rows per object: ``iou`` (the first click) and ``iou_ideal`` (the ideal set), and with a
RUAC head (``model.has_head``) ``auroc``: the pixel AUROC of the head's uncertainty for
the errors of the first click's mask (nan when that mask has no error). Void pixels count
neither way. :func:`gam` condenses a results table to GAM (SemSegBench's Generalization
Ability Measure: the worst corruption's mIoU at severity 3) with the mean beside it.
Examples: for the first few objects of an image the first-click mask under its worst
corrupted condition (the report draws it over the clean image).

The ground truth stays that of the clean image. Most corruptions keep the geometry, but
ImageNet-C's elastic transform warps the image at severities 1-2 by an affine map of up
to about a tenth (1) and a fifth (2) of the image side: there the IoU also counts the
misalignment between the moved object and its unmoved mask. Severity 3, where GAM is
read, moves pixels by a few percent only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol, measured_objects
from ppd.bench.schema import CLEAN, Example, Row, Unit, UnitResult, encode_mask, prompt_points

#: Kept in step with ppd.robustness.corruptions.CORRUPTIONS (a test checks), so that the
#: flags' defaults need no import of the corruption code.
CORRUPTION_NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
METHOD = "fixed_prompts"
#: The severity GAM is read at (SemSegBench's).
GAM_SEVERITY = 3
#: Objects per image whose worst corrupted mask becomes an example.
EXAMPLE_OBJECTS = 3


@dataclass
class CorruptionsConfig:
    corruptions: list[str] = field(
        default_factory=lambda: list(CORRUPTION_NAMES),
        metadata={"help": "corruptions to apply (default: all 15 of ImageNet-C: " + ", ".join(CORRUPTION_NAMES) + ")"},
    )
    severities: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4, 5], metadata={"help": "severities, each in 1..5 (default 1 2 3 4 5)"}
    )

    def __post_init__(self) -> None:
        unknown = [c for c in self.corruptions if c not in CORRUPTION_NAMES]
        if unknown:
            raise ValueError(f"unknown corruption {unknown[0]!r}; known: {', '.join(CORRUPTION_NAMES)}")
        if not self.corruptions or len(set(self.corruptions)) < len(self.corruptions):
            raise ValueError(f"corruptions must be distinct names, got {self.corruptions}")
        if not self.severities or any(not 1 <= int(s) <= 5 for s in self.severities) \
                or len(set(self.severities)) < len(self.severities):
            raise ValueError(f"severities must be distinct integers in 1..5, got {self.severities}")


def condition_name(corruption: str, severity: int) -> str:
    """The ``condition`` of a corruption at a severity: ``"gaussian_noise/3"``."""
    return f"{corruption}/{int(severity)}"


def parse_condition(condition: str) -> tuple[str, int] | None:
    """``(corruption, severity)`` of a condition name, None for ``clean`` or another name."""
    name, _, sev = condition.partition("/")
    return (name, int(sev)) if name in CORRUPTION_NAMES and sev.isdigit() else None


class CorruptionsProtocol(Protocol):
    name = "corruptions"
    Config = CorruptionsConfig
    title = "Common corruptions (fixed prompts)"
    table_metrics = ("iou", "iou_ideal")
    example_metric = "iou"
    quick = {"corruptions": ["gaussian_noise", "fog"], "severities": [GAM_SEVERITY]}  # keeps --quick within minutes

    def figures(self, results: Any, fig_dir: Any, load_scene: Any, examples: list) -> dict[str, tuple[Any, str]]:
        """mIoU versus severity per corruption, and the first image under every selected
        corruption at severity 3 (or the highest selected)."""
        from ppd.bench.protocols.corruptions_figures import corruption_grid, severity_figure

        out: dict[str, tuple[Any, str]] = {}
        path = severity_figure(results, fig_dir / f"{self.name}_severity.png")
        if path is not None:
            out["severity"] = (path, "mIoU (first click) versus severity per corruption; severity 0 is the clean image.")
        if len(results):
            first = results.iloc[0]
            severity = GAM_SEVERITY if GAM_SEVERITY in self.config.severities else max(self.config.severities)
            image = load_scene(str(first["domain"]), str(first["image"])).image
            grid = corruption_grid(image, fig_dir / f"{self.name}_grid.png", severity=severity,
                                   corruptions=tuple(self.config.corruptions))
            out["grid"] = (grid, f"One image under each selected corruption at severity {severity}.")
        return out

    def aggregates(self, results: Any) -> dict[str, Any]:
        """GAM (the worst corruption's mIoU at severity 3) with the mean over corruptions
        and the clean mIoU beside it, per ``model/domain``, for the first click (``gam``)
        and the ideal set (``gam_ideal``)."""
        out: dict[str, Any] = {}
        for metric, prefix in (("iou", "gam"), ("iou_ideal", "gam_ideal")):
            for model, domains in gam(results, metric).items():
                for domain, v in domains.items():
                    row = out.setdefault(f"{model}/{domain}", {})
                    row.update({prefix: v["gam"], f"{prefix}_corruption": v["gam_corruption"],
                                f"{prefix}_mean": v["mean"], f"{prefix}_clean": v["clean"]})
        return out

    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        from ppd.prompts import farthest_click, ideal_prompts, stack_prompts
        from ppd.metrics import iou
        from ppd.robustness.corruptions import CORRUPTIONS, corrupt

        seg = model.segmenter
        care, gts, objs = measured_objects(scene)
        result = UnitResult()
        if not objs:
            return result
        seed = int(rng.integers(2**63))
        first = np.stack([farthest_click(gts[i]).point_coords for i in objs])  # (N, 1, 2)
        first_labels = np.ones((len(objs), 1), np.int64)
        ideal = [ideal_prompts(gts[i], n_pos=6, n_neg=6) for i in objs]
        # Ideal sets of equal length share a decoder call: a padding point (label -1) is a
        # token the decoder attends to, so padding would make an object's mask depend on
        # the other objects of its image (and differ from the attacks protocol's).
        ideal_groups = [[r for r, p in enumerate(ideal) if len(p) == k] for k in sorted({len(p) for p in ideal})]
        conditions = [(CLEAN, scene.image)]
        for c in self.config.corruptions:
            for s in self.config.severities:
                conditions.append((condition_name(c, s), (c, int(s))))
        worst: dict[int, tuple[float, Example]] = {}
        for condition, what in conditions:
            if condition == CLEAN:
                image = what
            else:
                c, s = what
                image = corrupt(scene.image, c, s, rng=np.random.default_rng([seed, CORRUPTIONS.index(c), s]))
            emb = seg.encode(image)
            pred = seg.predict(emb, first, first_labels, multimask=True)
            ideal_masks: dict[int, np.ndarray] = {}
            for rows in ideal_groups:
                coords, labels = stack_prompts([ideal[r] for r in rows])
                masks = seg.predict(emb, coords, labels).masks
                ideal_masks.update({r: masks[j] for j, r in enumerate(rows)})
            for r, obj in enumerate(objs):
                gt = gts[obj]
                mask = np.asarray(pred.masks[r], bool) & care
                value = float(iou(mask, gt))
                result.rows.append(Row(METHOD, obj, "iou", value, condition))
                ideal_mask = np.asarray(ideal_masks[r], bool) & care
                result.rows.append(Row(METHOD, obj, "iou_ideal", float(iou(ideal_mask, gt)), condition))
                if model.has_head and pred.uncertainty is not None:
                    auroc = _auroc(pred.uncertainty[r], mask, gt, care)
                    result.rows.append(Row(METHOD, obj, "auroc", auroc, condition))
                if condition != CLEAN and r < EXAMPLE_OBJECTS and (obj not in worst or value < worst[obj][0]):
                    worst[obj] = (value, Example(METHOD, obj, "iou", value, prompt_points(first[r], first_labels[r]),
                                                 encode_mask(mask), condition=condition))
        result.examples = [ex for _, ex in worst.values()]
        return result


def _auroc(uncertainty: np.ndarray, mask: np.ndarray, gt: np.ndarray, care: np.ndarray) -> float:
    from ppd.metrics import uncertainty_auroc

    error = (mask != gt)[care]
    if not error.any() or error.all():
        return float("nan")
    return float(uncertainty_auroc(np.asarray(uncertainty, np.float64)[care], error))


def gam(results: Any, metric: str = "iou", severity: int = GAM_SEVERITY) -> dict[str, dict[str, dict[str, Any]]]:
    """GAM per model and domain from a results table (``results.parquet``'s columns).

    Per corruption the mean of ``metric`` over the objects at ``severity`` (the
    corruptions protocol's rows only); GAM is the lowest of these means, reported with
    the corruption it comes from, the mean over the corruptions beside it and the clean
    mIoU when present.

    Returns:
        ``{model: {domain: {"gam", "gam_corruption", "mean", "clean", "corruptions"}}}``
        (``corruptions``: how many entered). Models and domains without rows at
        ``severity`` are left out.
    """
    df = results[(results["metric"] == metric)]
    if "protocol" in df.columns:
        df = df[df["protocol"] == CorruptionsProtocol.name]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (model, domain), part in df.groupby(["model", "domain"], sort=True):
        parsed = part["condition"].map(parse_condition)
        at = part[parsed.map(lambda p: p is not None and p[1] == severity)]
        if at.empty:
            continue
        per = at.groupby(at["condition"].map(lambda c: c.split("/")[0]))["value"].mean()
        clean = part.loc[part["condition"] == CLEAN, "value"]
        out.setdefault(str(model), {})[str(domain)] = {
            "gam": float(per.min()),
            "gam_corruption": str(per.idxmin()),
            "mean": float(per.mean()),
            "clean": float(clean.mean()) if len(clean) else float("nan"),
            "corruptions": int(per.size),
        }
    return out
