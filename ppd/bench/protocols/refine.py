"""The refine protocol: coarse prompt sets refined by trained defenders and the baselines.

Per object: ``coarse_sets`` noisy prompt sets from :func:`ppd.prompts.coarse_prompts`
(its default noise: 8 points, flipped labels, boundary moves and far outliers), drawn from
the unit's random stream; with ``generators``, the sets of each named generator of
:data:`ppd.bench.generators.GENERATORS` (clean clicks, the ideal lattice, few or many
points, only flips, only boundary moves ...), each a condition of its own (the default
generator alone is the condition ``clean``: nothing else is perturbed). Each set is refined, without ground truth, by every baseline of
:mod:`ppd.agents.baselines` and by each ``--defender`` run
(:class:`~ppd.agents.defender.PromptDefender`, with the library's refine options), and
scored on SAM2's mask of the refined points. Methods: ``no_refine`` (the coarse set as it
is), ``random_drop`` (seeded from the unit's stream), ``greedy_score``, ``consistency``,
``mask_consensus`` and ``ppd:<run folder name>`` (``ppd:bundled`` for the defender shipped
with ppd). ``defender_options`` sets the defenders' refine options (``select=last``,
``min_score_gain=null`` ...; fields of :class:`~ppd.agents.refine_config.RefineConfig`);
``without_filter`` also runs each defender that has a wrong-label filter without it,
as ``ppd:<run>[no filter]``.

Rows per object and method, each the mean over the object's coarse sets: ``iou`` and
``dice`` of the refined mask against the object, ``refine_ms`` (wall time of the refine
call, the image already encoded and, for a defender, its graph built) and ``kept`` (the
fraction of the input prompts kept). Void pixels (``scene.meta["void"]``) count neither
way. Examples: per object, the first defender's refinement of the first coarse set (the
coarse set itself, ``no_refine``, when no defender is given).

With ``corrupted`` (``NAME/SEVERITY``, :mod:`ppd.robustness.corruptions`) and ``attacked``
(an adversarial image attack of :data:`ppd.robustness.attacks.ATTACKS`: ``pgd_linf``,
``segpgd_l2`` ...), the same coarse sets are refined on the degraded image too, each its
own condition named as in the corruptions and attacks protocols (``gaussian_noise/3``,
``pgd_linf``; ``GENERATOR@NAME`` with several generators). An attack is made as the
attacks protocol makes it: once per image, against the ideal set of every measured object
(:func:`ppd.prompts.ideal_prompts`, 6 positives and 6 negatives, sets of equal length
decoded together), through the whole model, with SemSegBench's settings unless
``iterations``, ``eps_linf`` ... say otherwise (the options are shared with the attacks
protocol); the coarse sets, which the attack never saw, are then refined on the attacked
image. The corruptions' and the attacks' seeds come from two child streams of the unit's
stream, one seed per attack name in :data:`~ppd.robustness.attacks.ATTACKS` order, so the
coarse sets stay those of a run without them and an attack gives the same image alone or
among others.

With ``attacker`` (a ``ppd train`` run folder holding ``attacker.zip``), the run's DQN
attacker also attacks each object's ideal set (its training start: the run's
``max_ideal_points`` per label) greedily on the clean image, all objects of an image in one
rollout, and its final set is refined by every method: condition ``dqn_attacker``
(``no_refine`` is the attacked IoU), with two references that refine nothing: ``ideal``
(the start set, before the attack) and ``attacked_oracle`` (the attacked set without its
wrong-label points, by the ground truth). ``python -m ppd.bench.defense`` prints these as
its ``ideal``, ``attacked``, ``attacked+oracle`` and ``defended`` columns.

A defender is used only with the segmenter it was trained on: a model whose segmenter has
another name or embedding size than the run's (its ``config.yaml``), or that cannot give
what the defender needs (per-node uncertainty), is benchmarked without that defender, with
a warning.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol, measured_objects
from ppd.bench.schema import CLEAN, Example, Row, Unit, UnitResult, encode_mask, prompt_points

logger = logging.getLogger(__name__)

#: The ``--defender`` value that names the defender shipped with ppd (as ``ppd demo``).
BUNDLED = "bundled"
#: Salt of the generators' own streams (:func:`generator_stream`).
GENERATOR_STREAM_SALT = 51_771
#: Condition of the sets a trained DQN attacker made from the ideal sets (``attacker``).
DQN_CONDITION = "dqn_attacker"
#: Reference methods of that condition: the ideal set before the attack, and the attacked
#: set without its wrong-label points by the ground truth.
DQN_IDEAL, DQN_ORACLE = "ideal", "attacked_oracle"
#: Method names of the baselines, in table order (``ppd.agents.baselines.BASELINES``).
BASELINE_NAMES = ("no_refine", "random_drop", "greedy_score", "consistency", "mask_consensus")


def defender_options_field() -> Any:
    """The ``defender_options`` field of the protocols that run defenders (refine, oneshot):
    ``KEY=VALUE`` refine options, read by :func:`defender_config`."""
    return field(default_factory=list, metadata={
        "help": "refine options KEY=VALUE of every defender, fields of ppd refine's config with YAML values (e.g. "
                "select=last min_score_gain=null keep_consistent=false) (default: ppd refine's defaults)"})


@dataclass
class RefineBenchConfig:
    defender: list[str] = field(
        default_factory=list,
        metadata={"help": "a ppd train run folder (or its defender.zip, or 'bundled' for the defender shipped with "
                  "ppd) whose defender refines the coarse sets; repeatable (default: the baselines only)"},
    )
    coarse_sets: int = field(default=1, metadata={"help": "coarse prompt sets per object (default 1)"})
    baselines: list[str] = field(
        default_factory=lambda: list(BASELINE_NAMES),
        metadata={"help": "baseline refiners to run: no_refine, random_drop, greedy_score, consistency, mask_consensus "
                  "(default all)"},
    )
    generators: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={"help": "prompt generators whose sets are refined, each its own condition: default (8 points, "
                  "about half corrupted), clean, ideal, few, many, flips, boundary, outliers, positives "
                  "(ppd.bench.generators.GENERATORS) (default: default)"},
    )

    corrupted: list[str] = field(
        default_factory=list,
        metadata={"help": "image corruptions NAME/SEVERITY (e.g. gaussian_noise/3 fog/3; see the corruptions "
                  "protocol) under which the same coarse sets are refined too, each its own condition: does "
                  "refining still help on a degraded image? (default: none)"},
    )

    attacked: list[str] = field(
        default_factory=list,
        metadata={"help": "adversarial image attacks (pgd_linf, pgd_l2, segpgd_linf, segpgd_l2, cospgd_linf, cospgd_l2; "
                  "see the attacks protocol), each made against the objects' ideal sets, under which the same "
                  "coarse sets are refined too, each its own condition (default: none)"},
    )
    iterations: int = field(default=20, metadata={"help": "gradient steps per image attack (attacks protocol, refine "
                                                          "--attacked) (default 20)"})
    eps_linf: float = field(
        default=8.0, metadata={"help": "L-inf radius of the image attacks on images in [0, 255] (default 8, i.e. "
                               "8/255 of the range)"})
    alpha_linf: float = field(
        default=2.55, metadata={"help": "L-inf step of the image attacks on images in [0, 255] (default 2.55, "
                                "SemSegBench's 0.01 x 255)"})
    eps_l2: float = field(default=64.0, metadata={"help": "L2 radius of the image attacks on images in [0, 255] "
                                                          "(default 64)"})
    alpha_l2: float = field(
        default=25.5, metadata={"help": "L2 step of the image attacks on images in [0, 255] (default 25.5, "
                                "SemSegBench's 0.1 x 255)"})
    attacker: str = field(
        default="", metadata={"help": "a ppd train run folder holding attacker.zip (or the file): its DQN attacker "
                              "attacks each object's ideal set, and the attacked sets are refined too, condition "
                              "dqn_attacker (shared with breps) (default: none)"})
    without_filter: bool = field(
        default=False,
        metadata={"help": "also refine with each defender without its wrong-label filter, as method "
                  "ppd:<run>[no filter] (runs that have a filter only) (default: off)"},
    )
    defender_options: list[str] = defender_options_field()

    def __post_init__(self) -> None:
        from ppd.bench.protocols.attacks import ATTACK_NAMES, AttacksConfig
        from ppd.bench.protocols.corruptions import parse_condition

        unknown = [a for a in self.attacked if a not in ATTACK_NAMES]
        if unknown or len(set(self.attacked)) < len(self.attacked):
            raise ValueError(f"attacked must be distinct attack names out of {', '.join(ATTACK_NAMES)}, "
                             f"got {self.attacked}")
        # the attack settings, checked as the attacks protocol checks them
        AttacksConfig(iterations=self.iterations, eps_linf=self.eps_linf, alpha_linf=self.alpha_linf,
                      eps_l2=self.eps_l2, alpha_l2=self.alpha_l2)
        defender_config(self.defender_options)  # a bad option fails here, before any work

        bad = [c for c in self.corrupted if parse_condition(c) is None]
        if bad:
            raise ValueError(f"corrupted: {bad[0]!r} is not NAME/SEVERITY with a known corruption (e.g. gaussian_noise/3)")
        if self.coarse_sets < 1:
            raise ValueError(f"coarse_sets must be >= 1, got {self.coarse_sets}")
        unknown = [b for b in self.baselines if b not in BASELINE_NAMES]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; known: {', '.join(BASELINE_NAMES)}")
        if not self.generators or len(set(self.generators)) < len(self.generators):
            raise ValueError(f"generators must be distinct names, got {self.generators}")


def defender_config(options: list[str]) -> Any:
    """The :class:`~ppd.agents.refine_config.RefineConfig` of ``KEY=VALUE`` items, each
    value read as YAML (``0.1``, ``false``, ``null``; ``off`` or ``none`` for an option
    that is not a switch, as ``ppd refine --min-score-gain off``, is null).

    Raises:
        ValueError: an item that is not ``KEY=VALUE``, an unknown key, a value out of range.
    """
    import dataclasses

    import yaml

    from ppd.agents.refine_config import RefineConfig

    fields = {f.name: f for f in dataclasses.fields(RefineConfig)}
    given: dict[str, Any] = {}
    for item in options:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"defender_options: {item!r} is not KEY=VALUE (e.g. select=last)")
        if key not in fields:
            raise ValueError(f"defender_options: unknown refine option {key!r}; known: {', '.join(fields)}")
        switch = isinstance(fields[key].default, bool)
        given[key] = None if not switch and text.lower() in ("off", "none") else yaml.safe_load(text)
    try:
        return RefineConfig(**given)
    except ValueError as exc:
        raise ValueError(f"defender_options: {exc}") from None


def defender_folder(run: str) -> Path:
    """The run folder of a ``--defender`` value (``bundled``: the shipped defender).

    Raises:
        FileNotFoundError: no such folder or file, or a folder without ``defender.zip``.
    """
    if run == BUNDLED:
        from ppd.agents.run_files import BUNDLED_DEFENDER

        path = BUNDLED_DEFENDER
    else:
        path = Path(run)
    if path.is_dir():
        if not (path / "defender.zip").is_file():
            raise FileNotFoundError(f"--defender {run}: {path} holds no defender.zip (a ppd train run folder does)")
        return path
    if path.is_file():
        return path.parent
    raise FileNotFoundError(f"--defender {run}: no such run folder or defender file: {path}")


def defender_method(run: str) -> str:
    """The method name of a ``--defender`` value: ``ppd:<run folder name>``."""
    return f"ppd:{BUNDLED}" if run == BUNDLED else f"ppd:{defender_folder(run).resolve().name}"


class RefineProtocol(Protocol):
    name = "refine"
    Config = RefineBenchConfig
    title = "Refining coarse prompts"
    table_metrics = ("iou", "dice", "refine_ms")
    lower_is_better = frozenset({"refine_ms"})
    example_metric = "iou"
    quick = {"defender": [BUNDLED], "baselines": ["no_refine", "greedy_score", "mask_consensus"]}

    def validate(self, models: dict[str, dict[str, Any]]) -> None:
        from ppd.bench.generators import GENERATORS

        if self.config.attacker:
            from ppd.robustness.dqn_attack import check_attacker_option

            check_attacker_option(self.config.attacker)
        unknown = [g for g in self.config.generators if g not in GENERATORS]
        if unknown:
            raise ValueError(f"unknown prompt generator {unknown[0]!r}; known: {', '.join(GENERATORS)}")
        seen: dict[str, str] = {}
        for run in self.config.defender:
            method = defender_method(run)  # raises for a missing run
            if method in seen:
                raise ValueError(f"--defender {seen[method]} and --defender {run} both give the method name "
                                 f"{method!r} (the run folder's name): rename one folder")
            seen[method] = run

    def prepare(self, model: BenchModel) -> dict[str, Any]:
        """The defenders that fit ``model``'s segmenter, loaded once: method -> defender."""
        from ppd.agents.defender import PromptDefender
        from ppd.agents.run_files import find_setting, read_run_config
        from ppd.bench import defender_variant
        from ppd.models import BUNDLED_NAME

        seg = model.segmenter
        config = defender_config(self.config.defender_options)
        defenders: dict[str, Any] = {}
        for run in self.config.defender:
            method, folder = defender_method(run), defender_folder(run)
            cfg = read_run_config(folder)
            # the name the run's own segmenter is loaded by (run_files._segmenter_from_config)
            trained_on = next((v for v in (find_setting(cfg, "segmenter"), find_setting(cfg, "model"))
                               if isinstance(v, str)), BUNDLED_NAME)
            if trained_on != seg.name:
                logger.warning("model %s: skipping defender %s, trained on segmenter %s, not %s",
                               model.name, run, trained_on, seg.name)
                continue
            try:
                defender = PromptDefender.load(None if run == BUNDLED else run, segmenter=seg, device=str(seg.device),
                                               config=config)
            except ValueError as exc:  # e.g. a defender that needs uncertainty on a model without a head
                logger.warning("model %s: skipping defender %s: %s", model.name, run, exc)
                continue
            dim = getattr(defender.model.policy.q_net, "node_feature_dim", seg.embed_dim)
            if dim != seg.embed_dim:
                logger.warning("model %s: skipping defender %s, trained on %d-channel embeddings, not %d",
                               model.name, run, dim, seg.embed_dim)
                continue
            defenders[method] = defender
            if self.config.without_filter and defender.label_filter is not None:
                # a shallow copy: the rollouts of the filtered defender are its cache hits
                defenders[f"{method}[no filter]"] = defender_variant(defender, label_filter=None)
        out: dict[str, Any] = {"defenders": defenders}
        if self.config.attacker:
            from ppd.robustness.dqn_attack import check_attacker, load_attacker

            out["attacker"] = load_attacker(self.config.attacker, device=str(seg.device))
            check_attacker(out["attacker"], seg, f"model {model.name}")
        return out

    def dqn_attacked_sets(self, seg: Any, attacker: Any, scene: Any) -> dict[int, tuple]:
        """Object index -> ``(start, attacked)``, each ``(coords, labels)``: the
        object's ideal set as the attacker's graph holds it, and the DQN attacker's final set from the
        object's ideal set (the attacker's training start: ``max_ideal_points`` per label),
        all objects of the image in one greedy rollout, as the fixed defense sets
        are attacked (:func:`~ppd.robustness.dqn_attack.dqn_point_attack`)."""
        from ppd.prompts import ideal_prompts
        from ppd.robustness.dqn_attack import dqn_point_attack

        care, gts, objs = measured_objects(scene)
        if not objs:
            return {}
        n_ideal = attacker.max_ideal_points
        starts = [ideal_prompts(gts[i], n_pos=n_ideal, n_neg=n_ideal) for i in objs]
        res = dqn_point_attack(seg, attacker, scene.image, gts[objs], [p.point_coords for p in starts],
                               [p.point_labels for p in starts], valid=care)
        return {obj: (res.trajectories[j][0], res.trajectories[j][-1]) for j, obj in enumerate(objs)}

    def attacked_images(self, seg: Any, scene: Any, stream: np.random.Generator) -> list[tuple[str, np.ndarray]]:
        """``(attack name, attacked image)`` per attack of ``attacked``: the attacks
        protocol's attack against the ideal sets of the scene's measured objects (the
        image as (H, W, 3) float32 in [0, 1]); seeds from ``stream``, one per attack name
        in :data:`~ppd.robustness.attacks.ATTACKS` order."""
        from ppd.bench.protocols.attacks import IDEAL_NEG, IDEAL_POS
        from ppd.prompts import ideal_prompts, stack_prompts
        from ppd.robustness.attacks import ATTACKS, PromptGroup, named_attack, run_attack

        cfg = self.config
        seeds = {name: int(stream.integers(2**63)) for name in ATTACKS}
        care, gts, objs = measured_objects(scene)
        if not objs:
            return []
        sets = [ideal_prompts(gts[i], n_pos=IDEAL_POS, n_neg=IDEAL_NEG) for i in objs]
        # sets of equal length together, unpadded, as the attacks protocol decodes them
        groups = [PromptGroup(*stack_prompts([sets[r] for r in rows]), gts[[objs[r] for r in rows]], False)
                  for rows in ([r for r, p in enumerate(sets) if len(p) == k] for k in sorted({len(p) for p in sets}))]
        out = []
        for name in cfg.attacked:
            attack = named_attack(name, cfg.iterations, cfg.eps_linf, cfg.eps_l2, cfg.alpha_linf, cfg.alpha_l2)
            out.append((name, run_attack(seg, scene.image, groups, attack, seeds[name], care).as_float()))
        return out

    @staticmethod
    def _drop_seed(rng: np.random.Generator) -> int:
        """The seed of one ``random_drop`` refiner, drawn from ``rng`` whether that
        baseline runs or not: the coarse sets drawn after it stay the same whichever
        baselines a run lists."""
        return int(rng.integers(2**63))

    def _refiners(self, seg: Any, defenders: dict[str, Any], drop_seed: int) -> dict[str, Any]:
        """Method -> refiner for one prompt set: the baselines, then the defenders."""
        from ppd.agents.baselines import BASELINES

        out = {name: BASELINES[name](seg, seed=drop_seed) if name == "random_drop" else BASELINES[name](seg)
               for name in self.config.baselines}
        return {**out, **defenders}

    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        from ppd.bench.generators import generator_prompts
        from ppd.metrics import dice, iou

        seg, image = model.segmenter, scene.image
        defenders = (resources or {}).get("defenders", {})
        care = measured_objects(scene)[0]
        images = [("", image)]  # (condition suffix, image): the clean image, each corruption, each attack
        # child streams (corruptions, attacks): the coarse sets stay as without them
        streams = rng.spawn(2) if self.config.corrupted or self.config.attacked else []
        if self.config.corrupted:
            from ppd.bench.protocols.corruptions import parse_condition
            from ppd.robustness.corruptions import CORRUPTIONS, corrupt

            seed = int(streams[0].integers(2**63))
            for cond in self.config.corrupted:
                name, severity = parse_condition(cond)
                images.append((cond, corrupt(image, name, severity,
                                             rng=np.random.default_rng([seed, CORRUPTIONS.index(name), severity]))))
        if self.config.attacked:
            images += self.attacked_images(seg, scene, streams[1])
        for _, img in images:
            seg.encode(img)  # encoded once, before any timed call
            for defender in defenders.values():
                defender.record(img)
        shown = next(iter(defenders), "no_refine")
        result = UnitResult()
        single = self.config.generators == ["default"]
        for generator in self.config.generators:
            stream = generator_stream(rng, generator)
            for obj, gt in enumerate(np.asarray(scene.masks, bool)):
                gt = gt & care
                if not gt.any():
                    continue
                sets = []  # the same coarse sets (and random-drop seeds) under every image condition
                for _ in range(self.config.coarse_sets):
                    coarse = generator_prompts(generator, gt, stream)
                    sets.append((coarse, self._drop_seed(stream)))
                for suffix, img in images:
                    if suffix:
                        condition = suffix if single else f"{generator}@{suffix}"
                    else:
                        condition = CLEAN if single else generator
                    values: dict[str, dict[str, list[float]]] = {}
                    for s, (coarse, drop_seed) in enumerate(sets):
                        for method, refiner in self._refiners(seg, defenders, drop_seed).items():
                            res, mask, scores = _refined(refiner, img, coarse.point_coords, coarse.point_labels,
                                                         gt, care)
                            for metric, value in scores.items():
                                values.setdefault(method, {}).setdefault(metric, []).append(value)
                            if s == 0 and method == shown and not suffix:
                                result.examples.append(Example(
                                    method, obj, "iou", scores["iou"], prompt_points(res.point_coords, res.point_labels),
                                    encode_mask(mask), condition=condition,
                                    input_points=prompt_points(coarse.point_coords, coarse.point_labels)))
                    result.rows += [Row(method, obj, metric, float(np.mean(v)), condition)
                                    for method, metrics in values.items() for metric, v in metrics.items()]
        if (resources or {}).get("attacker") is not None:
            # after the generators: their sets and seeds stay those of a run without it
            from ppd.oneshot import remove_wrong_points

            for obj, (start, (coords, labels)) in self.dqn_attacked_sets(seg, resources["attacker"], scene).items():
                gt = np.asarray(scene.masks[obj], bool) & care
                for method, refiner in self._refiners(seg, defenders, self._drop_seed(rng)).items():
                    scores = _refined(refiner, image, coords, labels, gt, care)[2]
                    result.rows += [Row(method, obj, metric, value, DQN_CONDITION) for metric, value in scores.items()]
                # references, not refiners: the set before the attack, and the attacked set
                # without its wrong-label points by the ground truth
                for method, (c, lab) in ((DQN_IDEAL, start), (DQN_ORACLE, remove_wrong_points(coords, labels, gt))):
                    mask = np.asarray(seg.predict(image, c, lab).masks[0], bool) & care
                    result.rows += [Row(method, obj, "iou", float(iou(mask, gt)), DQN_CONDITION),
                                    Row(method, obj, "dice", float(dice(mask, gt)), DQN_CONDITION)]
        return result


def generator_stream(rng: np.random.Generator, generator: str) -> np.random.Generator:
    """The stream a generator's prompt sets are drawn from in a unit: ``rng`` itself for
    ``default`` (so a run of the default sets draws as it always has), else a child of
    ``rng``'s seed named by the generator, which does not advance ``rng``: a generator's
    sets on an image do not depend on which other generators the run lists."""
    if generator == "default":
        return rng
    seq = rng.bit_generator.seed_seq
    key = (*seq.spawn_key, GENERATOR_STREAM_SALT, zlib.crc32(generator.encode()))
    return np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=key))


def _refined(refiner: Any, image: np.ndarray, coords: np.ndarray, labels: np.ndarray, gt: np.ndarray,
             care: np.ndarray) -> tuple[Any, np.ndarray, dict[str, float]]:
    """``(result, mask, scores)`` of one refine call: the mask restricted to ``care``,
    its ``iou`` and ``dice`` against ``gt``, the call's wall time ``refine_ms`` and the
    fraction of the input points ``kept``."""
    from ppd.metrics import dice, iou

    t = time.perf_counter()
    res = refiner.refine(image, coords, labels)
    ms = 1000.0 * (time.perf_counter() - t)
    mask = np.asarray(res.mask, bool) & care
    return res, mask, {"iou": float(iou(mask, gt)), "dice": float(dice(mask, gt)), "refine_ms": ms,
                       "kept": float(np.mean(res.kept))}
