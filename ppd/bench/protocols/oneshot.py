"""The one-shot protocol: feature-matching prompts from a reference, refined, vs the baselines.

Per target image and per group of its objects that share a class, a reference image
with one object of that class gives feature-matching (FM) points on the target
(:func:`ppd.prompts.feature_matching`); each method's mask is scored against the
group's union (the class's region in the target, as one-shot semantic segmentation
scores it).

Where the reference comes from:

* procedural domains (images ``DOMAIN-SEED`` of ``procedural:DOMAIN``): each object's
  class is read off its scene (:func:`ppd.data.oneshot_pairs.object_classes`: shape
  family as drawn, appearance as measured); objects of one class form a group, and
  the reference is a new scene of the domain with one instance of that class
  (:func:`~ppd.data.oneshot_pairs.reference_scene`);
* COCO domains and folders per class (:class:`ppd.data.class_folders.ClassFolders`):
  groups are categories (``meta["category_ids"]``; a class folder's name); the
  reference is an instance of the category in another image of the domain (the domain's images as the
  runner holds them, see :meth:`OneShotProtocol.bind_domains`; until bound, another
  instance of the category in the same image, and a category with one instance is not
  measured);
* folder domains (``images/`` + ``masks/``): no classes, so each object is its own
  group and the reference is the largest object of another image of the same folder
  (a different object, often of another kind: a hard, honest setting).

Which reference a target gets is drawn from a stream of ``pair_seed``, the domain and
the image, not from the unit's stream, so every model of a run faces the same pairs. A
reference image or mask that cannot be read (found late: the domain's checks read only
file headers) leaves the groups that drew it unmeasured, with a warning naming the file.

Methods: ``fm`` (the FM points as they are), ``fm+<baseline>`` for each refiner of
``baselines`` (:mod:`ppd.agents.baselines`; ``random_drop`` seeded from the unit's
stream), ``fm+ppd:<run>`` per ``--defender`` (loaded and matched to the segmenter as in
the refine protocol; with ``reference_choice``, the default, its output is picked among
FM's points, their single edits and the defender's own output by the run's edit chooser,
:func:`ppd.oneshot_quality.refine_with_reference`), ``persam`` (:func:`ppd.oneshot_baselines.persam_mask`, with its
cascaded post-refinement), ``gbmseg`` (:func:`ppd.oneshot_baselines.gbmseg`) and
``fm_oracle`` (FM without its wrong points by the ground truth: a reference, not a
method; with ``search_oracle``, also ``fm_search_oracle``, the ground truth's best
removals and flips of any FM point, :func:`ppd.oneshot.search_edit_oracle`). Rows per
group and method: ``iou``, ``dice`` and ``wrong`` (the fraction of
the method's final points whose label disagrees with the ground truth; NaN for none).
Void pixels count neither way. Examples: ``fm`` and the first defender's points; the
report's figure ``oneshot_pairs.png`` shows reference, FM points and refined points.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol
from ppd.bench.protocols.refine import BUNDLED, RefineBenchConfig, RefineProtocol, defender_options_field
from ppd.bench.schema import Example, Row, Unit, UnitResult, encode_mask, prompt_points

logger = logging.getLogger(__name__)

#: Refiners of ``ppd.agents.baselines`` applied to the FM points by default.
REFINE_BASELINES = ("random_drop", "greedy_score", "consistency", "mask_consensus")
#: Two objects of a procedural scene are one class when they share the shape family and
#: their measured colours are this close (RGB distance).
SAME_CLASS_COLOUR = 0.12


@dataclass
class OneShotConfig:
    defender: list[str] = field(
        default_factory=list,
        metadata={"help": "a ppd train run folder (or its defender.zip, or 'bundled') whose defender refines the FM "
                  "points; repeatable (default: none)"},
    )
    baselines: list[str] = field(
        default_factory=lambda: list(REFINE_BASELINES),
        metadata={"help": "refiners of ppd.agents.baselines applied to the FM points, each a method fm+NAME; "
                  "no_refine is fm itself "
                  f"(default: {' '.join(REFINE_BASELINES)})"},
    )
    fm_pos: int = field(default=5, metadata={"help": "most positive FM points (default 5)"})
    fm_neg: int = field(default=5, metadata={"help": "most negative FM points (default 5)"})
    pair_seed: int = field(default=0, metadata={"help": "seed of the reference drawn for each target (default 0)"})
    search_oracle: bool = field(
        default=False,
        metadata={"help": "also the method fm_search_oracle: the ground truth's greedy search over removals and label "
                  "flips of any FM point, right ones included (ppd.oneshot.search_edit_oracle), what a refiner of FM's "
                  "points could reach; a reference, not a method; two batched decodes per step (default off)"})
    reference_choice: bool = field(
        default=True,
        metadata={"help": "each defender picks its output among FM's points, their single edits (one point removed or "
                  "relabelled) and its own output by a mask-quality score learned with the ground truth of training "
                  "pairs, which compares each candidate's mask with the reference (colour, shape, matched patches; "
                  "ppd.oneshot_quality); the run folder's edit_chooser.json, else the bundled one "
                  "(--no-reference-choice: the defender's own output, default on)"})
    defender_options: list[str] = defender_options_field()

    def __post_init__(self) -> None:
        from ppd.bench.protocols.refine import defender_config

        if self.fm_pos < 1 or self.fm_neg < 0:
            raise ValueError(f"fm_pos must be >= 1 and fm_neg >= 0, got {self.fm_pos}, {self.fm_neg}")
        defender_config(self.defender_options)  # a bad option fails here, before any work


class OneShotProtocol(Protocol):
    name = "oneshot"
    Config = OneShotConfig
    title = "One-shot prompts: feature matching and refinement"
    table_metrics = ("iou", "dice", "wrong")
    lower_is_better = frozenset({"wrong"})
    example_metric = "iou"
    quick = {"defender": [BUNDLED], "baselines": ["greedy_score"]}  # keeps --quick within minutes
    descriptions = {"wrong": "fraction of the method's final points whose label disagrees with the ground truth"}

    def __init__(self, config: OneShotConfig | None = None) -> None:
        super().__init__(config)
        self.domains: dict[str, Any] | None = None
        self._by_category: dict[str, dict[Any, list[int]] | None] = {}  # see _category_index

    def bind_domains(self, domains: dict[str, Any]) -> None:
        """Give the protocol the run's domains (name -> :class:`ppd.bench.data.Domain`),
        where COCO references are drawn from; a runner calls it before :meth:`run`."""
        self.domains = domains
        self._by_category = {}

    def _refine_protocol(self) -> RefineProtocol:
        return RefineProtocol(RefineBenchConfig(defender=list(self.config.defender),
                                                defender_options=list(self.config.defender_options)))

    def validate(self, models: dict[str, dict[str, Any]]) -> None:
        from ppd.agents.baselines import BASELINES

        unknown = [b for b in self.config.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; known: {', '.join(BASELINES)}")
        self._refine_protocol().validate(models)

    def prepare(self, model: BenchModel) -> dict[str, Any]:
        """The defenders that fit ``model``'s segmenter (as the refine protocol loads them)
        and, with ``reference_choice``, each one's edit chooser (method -> chooser)."""
        from ppd.bench.protocols.refine import defender_folder, defender_method
        from ppd.oneshot_quality import CHOOSER_FILE, chooser_of_run

        out = self._refine_protocol().prepare(model)
        if self.config.reference_choice:
            choosers = {}
            for run in self.config.defender:
                method = defender_method(run)
                if method in out["defenders"]:
                    chooser, own = chooser_of_run(defender_folder(run))
                    if not own:
                        logger.warning("defender %s has no %s; its reference choice uses the bundled one (fitted for "
                                       "the bundled segmenter)", run, CHOOSER_FILE)
                    fitted_for = chooser.meta.get("segmenter")
                    if fitted_for not in (None, model.segmenter.name):
                        logger.warning("defender %s: its edit chooser was fitted for segmenter %s, not %s; refit it "
                                       "(ppd train with one-shot starts, or ppd.oneshot_quality.fit_chooser)",
                                       run, fitted_for, model.segmenter.name)
                    choosers[method] = chooser
            out["choosers"] = choosers
        return out

    def figures(self, results: Any, fig_dir: Any, load_scene: Any, examples: list) -> dict[str, tuple[Any, str]]:
        from ppd.bench.protocols.oneshot_figures import oneshot_figure, report_panels

        path = oneshot_figure(report_panels(self.references, examples, load_scene),
                              fig_dir / f"{self.name}_pairs.png")
        caption = ("Reference (object outlined), the target with the feature-matching points, and the target with "
                   "the first defender's points and mask (target outlined yellow; a cross marks a point whose label "
                   "disagrees with the ground truth).")
        return {} if path is None else {"pairs": (path, caption)}

    # -- references ---------------------------------------------------------------
    def _stream(self, unit: Unit) -> np.random.Generator:
        return np.random.default_rng([self.config.pair_seed, zlib.crc32(f"{unit.domain}\0{unit.image}".encode())])

    def references(self, scene, unit: Unit) -> list[tuple[list[int], Any, np.ndarray | None]]:
        """The groups of ``scene``'s objects and a reference for each: ``(object
        indices, reference image, reference mask)`` (image and mask None when no
        reference exists)."""
        stream = self._stream(unit)
        proc = _procedural(scene, unit)
        if proc is not None:
            return _procedural_references(scene, *proc, stream)
        if "category_ids" in scene.meta:
            return self._category_references(scene, unit, stream)
        return self._folder_references(scene, unit, stream)

    def _category_references(self, scene, unit: Unit, stream: np.random.Generator):
        cats = _categories(scene)
        out = []
        domain = (self.domains or {}).get(unit.domain)
        for cat in sorted(set(cats), key=str):
            group = [i for i, c in enumerate(cats) if c == cat]
            ref = None if domain is None else _category_pool_reference(
                domain, self._category_index(unit.domain, domain), unit, cat, stream)
            if ref is None and len(group) >= 2:  # not bound: another instance of the same image
                k = int(stream.integers(len(group)))
                ref = (scene.image, scene.masks[group[k]])
                group = [g for j, g in enumerate(group) if j != k]
            if ref is None:
                logger.warning("--data %s: %s: no other image holds an object of category %r, so its %d object(s) "
                               "are not measured (a one-shot reference comes from another image)",
                               unit.domain, unit.image, cat, len(group))
            out.append((group, *(ref or (None, None))))
        return out

    def _category_index(self, name: str, domain) -> dict[Any, list[int]] | None:
        """Category -> dataset indices of the images holding it, for a bound domain whose
        dataset knows its images' categories without reading them (COCO annotations,
        class folders; None for any other), built once per domain."""
        by_category = self._by_category
        if name not in by_category:
            data = domain.dataset
            index = None
            if hasattr(data, "image_categories"):
                index = {}
                for j in range(len(data)):
                    for cat in dict.fromkeys(data.image_categories(j)):
                        index.setdefault(cat, []).append(j)
            by_category[name] = index
        return by_category[name]

    def _folder_references(self, scene, unit: Unit, stream: np.random.Generator):
        domain = (self.domains or {}).get(unit.domain)
        pool = domain if domain is not None else _folder_pool(scene)
        size = 0 if pool is None else len(pool.dataset) if domain is not None else len(pool)
        out = []
        for obj in range(scene.num_objects):
            ref = None
            if size > 1:
                index = int(stream.integers(size - 1))
                own = _own_index(pool, unit, scene)
                index += int(own is not None and index >= own)
                other = _reference_scene(pool, index)
                if other is not None and other.num_objects:
                    areas = other.masks.reshape(other.num_objects, -1).sum(1)
                    ref = (other.image, other.masks[int(np.argmax(areas))])
            out.append(([obj], *(ref or (None, None))))
        return out

    # -- the unit -----------------------------------------------------------------
    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        from ppd.agents.baselines import BASELINES
        from ppd.metrics import dice, iou
        from ppd.oneshot import remove_wrong_points, search_edit_oracle
        from ppd.oneshot_baselines import gbmseg, persam_mask
        from ppd.oneshot_quality import refine_with_reference
        from ppd.prompts import feature_matching

        seg, image = model.segmenter, scene.image
        defenders = (resources or {}).get("defenders", {})
        choosers = (resources or {}).get("choosers", {})
        void = scene.meta.get("void")
        care = np.ones(scene.masks.shape[1:], bool) if void is None else ~np.asarray(void, bool)
        seg.encode(image)
        for defender in defenders.values():
            defender.record(image)
        shown = next(iter(defenders), None)
        result = UnitResult()
        for group, ref_image, ref_mask in self.references(scene, unit):
            gt = np.asarray(scene.masks[group], bool).any(axis=0) & care
            if ref_image is None or not gt.any():
                continue
            obj = min(group)
            coords, labels = feature_matching(seg, ref_image, ref_mask, image, self.config.fm_pos, self.config.fm_neg)
            sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            refiners = {f"fm+{name}": (BASELINES[name](seg, seed=int(rng.integers(2**63))) if name == "random_drop"
                                       else BASELINES[name](seg)) for name in self.config.baselines
                         if name != "no_refine"}  # no_refine is fm itself
            refiners.update({f"fm+{m}": d for m, d in defenders.items()})
            refiners = {"fm": BASELINES["no_refine"](seg), **refiners}
            for method, refiner in refiners.items():
                chooser = choosers.get(method[3:])  # a defender's, with reference_choice
                res = (refiner.refine(image, coords, labels) if chooser is None else
                       refine_with_reference(refiner, image, coords, labels, ref_image, ref_mask, chooser))
                sets[method] = (res.point_coords, res.point_labels, np.asarray(res.mask, bool))
            c, lab = remove_wrong_points(coords, labels, gt)
            sets["fm_oracle"] = (c, lab, np.asarray(seg.predict(image, c, lab).masks[0], bool))
            if self.config.search_oracle:
                sets["fm_search_oracle"] = search_edit_oracle(seg, image, coords, labels, gt, care)
            mask, c, lab = persam_mask(seg, ref_image, ref_mask, image)
            sets["persam"] = (c, lab, np.asarray(mask, bool))
            c, lab = gbmseg(seg, ref_image, ref_mask, image)
            sets["gbmseg"] = (c, lab, np.asarray(seg.predict(image, c, lab).masks[0], bool))
            for method, (c, lab, mask) in sets.items():
                mask = mask & care
                value = float(iou(mask, gt))
                result.rows += [Row(method, obj, "iou", value), Row(method, obj, "dice", float(dice(mask, gt))),
                                Row(method, obj, "wrong", wrong_fraction(c, lab, gt))]
                if method == "fm" or (shown is not None and method == f"fm+{shown}"):
                    result.examples.append(Example(method, obj, "iou", value, prompt_points(c, lab), encode_mask(mask)))
        return result


def wrong_fraction(coords: np.ndarray, labels: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of the points whose label disagrees with ``gt`` at the point (NaN for none)."""
    from ppd.oneshot import mask_at_points

    coords, labels = np.asarray(coords).reshape(-1, 2), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(mask_at_points(gt, coords) != (labels == 1)))


def _procedural(scene, unit: Unit) -> tuple[str, int] | None:
    """``(domain, seed)`` when the unit's image is the procedural scene ``DOMAIN-SEED``."""
    from ppd.data.scenes import DOMAINS

    m = re.fullmatch(r"([a-z]+)-(\d+)", unit.image)
    if m and m.group(1) in DOMAINS and int(m.group(2)) == scene.seed:
        return m.group(1), int(m.group(2))
    return None


def _procedural_references(scene, domain: str, seed: int, stream: np.random.Generator):
    from ppd.data.oneshot_pairs import object_classes, reference_scene
    from ppd.data.scenes import make_scene

    full = make_scene(seed, domain, scene.image.shape[0])
    classes = object_classes(full, seed, domain) if np.array_equal(full.image, scene.image) else None
    if classes is None:
        logger.warning("%s-%d: not the generator's scene; no procedural references", domain, seed)
        return []
    kept = scene.meta.get("objects", list(range(scene.num_objects)))
    cls = [classes[k] for k in kept]
    out, done = [], set()
    for i, c in enumerate(cls):
        if i in done:
            continue
        group = [j for j, d in enumerate(cls) if j not in done and d.shape == c.shape
                 and np.linalg.norm(np.subtract(d.colour, c.colour)) <= SAME_CLASS_COLOUR]
        done.update(group)
        ref, obj = reference_scene(c, domain, int(stream.integers(2**31)), scene.image.shape[0])
        out.append((group, ref.image, ref.masks[obj]))
    return out


def _category_pool_reference(domain, by_category: dict[Any, list[int]] | None, unit: Unit, cat,
                             stream: np.random.Generator):
    """An instance of category ``cat`` in another image of a bound domain
    (``by_category``: :meth:`OneShotProtocol._category_index`); None when there is none."""
    if by_category is None:
        return None
    own = domain.dataset_index(unit.index)
    cands = [j for j in by_category.get(cat, []) if j != own]
    if not cands:
        return None
    other = _reference_scene(domain, cands[int(stream.integers(len(cands)))])
    if other is None:
        return None
    objs = [k for k, c in enumerate(_categories(other)) if c == cat]
    if not objs:
        return None
    return other.image, other.masks[objs[int(stream.integers(len(objs)))]]


def _reference_scene(pool, index: int):
    """Scene ``index`` of ``pool`` (a bound domain's whole dataset, sampled or not, or a
    folder) to draw a reference from, or None when its files cannot be read: a bad file
    found late costs the groups that drew it as their reference (a warning names it),
    never the run."""
    try:
        return pool.scene_at(index) if hasattr(pool, "scene_at") else pool[index]
    except (OSError, ValueError) as e:
        logger.warning("no one-shot reference from a file that cannot be read: %s", e)
        return None


def _categories(scene) -> list:
    """The category of each of the scene's objects (``meta["category_ids"]`` are the
    file's instances; a domain keeps those of ``meta["objects"]``)."""
    cats = list(scene.meta["category_ids"])
    return [cats[k] for k in scene.meta["objects"]] if "objects" in scene.meta else cats


def _folder_pool(scene):
    """The folder the scene was read from (``meta`` image and mask files), or None."""
    from pathlib import Path

    from ppd.data.loaders import ImageMaskFolder

    if "image_file" not in scene.meta or "mask_file" not in scene.meta:
        return None
    return ImageMaskFolder(Path(scene.meta["image_file"]).parent, Path(scene.meta["mask_file"]).parent)


def _own_index(pool, unit: Unit, scene) -> int | None:
    """The target's own index in ``pool`` (a bound domain's dataset, or the folder by its
    pairs)."""
    if hasattr(pool, "dataset_index"):
        return pool.dataset_index(unit.index)
    files = [str(img) for img, _ in getattr(pool, "pairs", [])]
    return files.index(scene.meta["image_file"]) if scene.meta.get("image_file") in files else None
