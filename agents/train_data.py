"""The scenes ``ppd train`` learns from and is evaluated on: ``data`` / ``eval_data`` sources and a seeded held-out split.

A source is what ``ppd bench --data`` takes (:mod:`ppd.bench.data`), with or without a
``NAME=``: a folder holding ``images/`` and ``masks/``, a COCO ``.json``, or
``procedural:DOMAIN``. Several sources are mixed: the training set is their
concatenation (each scene's ``domain`` is its source's name, a procedural source's
its domain), and so is the evaluation set.

Held out, never trained on:

* without ``eval_data``, ``eval_scenes`` images are split evenly over the sources; a
  folder or COCO source gives its share from a permutation of its images drawn from
  the run's seed (at most half of them) and trains on the rest; a procedural source
  trains on ``scenes`` scenes from the run's seed and evaluates on scenes from
  :data:`~ppd.agents.evaluation.EVAL_SEED` on;
* with ``eval_data``, every training source trains on all of its images and the
  evaluation sources give ``eval_scenes`` images between them (a seeded sample where
  a source has more); a source that is both is refused.

With no source at all, training is the procedural training domain (``scenes`` scenes)
and evaluation its held-out scenes: what ``ppd train`` has always done.

Only objects of at least ``min_area`` pixels (the ``max_objects`` largest, when above
0) of a dataset's images are trained and evaluated on; images left without one are
skipped (counted in a log line). Images are read once here to find them, and are held
in memory by the training world as they are encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppd.bench.data import NAME_PATTERN, DataError, DataSpec, Selection, open_domain
from ppd.data.scenes import DOMAINS, TRAIN_DOMAIN, JitteredScenes, ProceduralScenes
from ppd.data.types import Scene

logger = logging.getLogger(__name__)

__all__ = ["SPLIT_SALT", "TrainingData", "check_sources", "open_training_data", "parse_source"]

#: Salt of the held-out split's permutation of a dataset source.
SPLIT_SALT = 604_117


@dataclass
class TrainingData:
    """The training and the held-out scenes of a run, and a line saying what they are."""

    train: Sequence[Scene]
    eval: Sequence[Scene]
    description: str


class _Picked(Sequence):
    """Scenes ``indices`` of a :class:`ppd.bench.data.Domain`: its selected objects, in
    the file's order (the category ids, if any, of those objects only)."""

    def __init__(self, domain: Any, indices: list[int]) -> None:
        self.domain, self.indices = domain, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        scene = self.domain.scene(self.indices[i])  # objects largest first
        kept = scene.meta["objects"]
        order = np.argsort(kept, kind="stable")  # back to the file's order
        meta = {**scene.meta, "objects": [kept[k] for k in order]}
        cats = scene.meta.get("category_ids")
        if cats is not None:
            meta["category_ids"] = [cats[k] for k in meta["objects"]]
        return Scene(scene.image, scene.masks[order], domain=scene.domain, seed=scene.seed, meta=meta)


class _Concat(Sequence):
    """Several scene sequences as one."""

    def __init__(self, parts: list[Sequence[Scene]]) -> None:
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"scene index {i} out of range for {len(self)} scenes")
        i %= len(self)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][i - int(self.starts[k])]


def parse_source(text: str) -> Any:
    """A :class:`ppd.bench.data.DataSpec` from ``NAME=SOURCE`` or a bare ``SOURCE``
    (named after the folder, the file's stem or the procedural domain)."""
    name, sep, source = text.partition("=")
    if sep and NAME_PATTERN.match(name) and not Path(text).exists():
        return DataSpec.parse(text)
    source = text
    if source.startswith("procedural:"):
        name = source.split(":", 1)[1]
    else:
        path = Path(source).expanduser()
        name = path.stem if path.suffix.lower() == ".json" else (path.resolve().name or "data")
    name = "".join(c if c.isalnum() or c in "_.+-" else "_" for c in name).lstrip("_.+-") or "data"
    return DataSpec(name, source)


def _split_evenly(total: int, k: int) -> list[int]:
    return [total // k + (i < total % k) for i in range(k)]


def _usable(domain: Any) -> list[int]:
    """The images of a dataset domain with at least one object to train on."""
    keep = [i for i in range(len(domain)) if domain.scene(i).num_objects]
    if len(keep) < len(domain):
        logger.info("%s: %d of %d images have no object of the minimum area; skipped", domain.name,
                    len(domain) - len(keep), len(domain))
    if not keep:
        raise DataError(f"--data {domain.name}: no image has an object to train on (min_area and max_objects "
                        "filter them all out, or the masks are empty)")
    return keep


def _open(spec: Any, cfg: Any) -> Any:
    # checked by check_sources
    return open_domain(spec, Selection(min_area=cfg.min_area, max_objects=cfg.max_objects or None), check=False)


def _procedural_domain(spec: Any) -> str:
    domain = spec.source.split(":", 1)[1]
    if domain not in DOMAINS:
        raise DataError(f"--data {spec.name}: unknown procedural domain {domain!r}; known: {', '.join(DOMAINS)}")
    return domain


def check_sources(cfg: Any) -> tuple[list[Any], list[Any]]:
    """The training and evaluation sources of ``cfg`` as :class:`ppd.bench.data.DataSpec`
    lists, checked without decoding an image: each exists and is a readable folder,
    COCO file or procedural domain (file headers only), and no source is both.

    Raises:
        ppd.bench.data.DataError: the first problem, naming the source.
    """
    specs = [parse_source(s) for s in (cfg.data or [f"procedural:{TRAIN_DOMAIN}"])]
    eval_specs = [parse_source(s) for s in cfg.eval_data]
    own = {str(Path(s.source).expanduser().resolve()) for s in specs if s.kind != "procedural"}
    both = [s.source for s in eval_specs if s.kind != "procedural" and str(Path(s.source).expanduser().resolve()) in own]
    if both:
        raise DataError(f"--eval-data {both[0]} is also --data: held-out images must not be trained on "
                        "(leave --eval-data out to hold images out of --data by the seed)")
    for spec in [*specs, *eval_specs]:
        if spec.kind == "procedural":
            _procedural_domain(spec)
        else:
            open_domain(spec)  # headers only
    return specs, eval_specs


def open_training_data(cfg: Any) -> TrainingData:
    """The training and held-out scenes of a :class:`~ppd.agents.train_config.TrainConfig`
    (see the module docstring).

    Raises:
        ppd.bench.data.DataError: a source that cannot be read, has no usable image,
            is too small to hold images out, or is also an evaluation source.
    """
    from ppd.agents.evaluation import EVAL_SEED

    train_seed = cfg.seed * 1_000_000 + 500_000
    specs, eval_specs = check_sources(cfg)
    train_parts: list[Sequence[Scene]] = []
    eval_parts: list[Sequence[Scene]] = []
    lines = []
    shares = _split_evenly(cfg.eval_scenes, len(eval_specs or specs))
    for k, spec in enumerate(specs):
        if spec.kind == "procedural":
            domain = _procedural_domain(spec)
            train_parts.append(ProceduralScenes(domain, cfg.scenes, seed=train_seed))
            if not eval_specs and shares[k]:
                eval_parts.append(ProceduralScenes(domain, shares[k], seed=EVAL_SEED))
            lines.append(f"{spec.name}: {cfg.scenes} procedural {domain} scenes")
            continue
        domain = _open(spec, cfg)
        usable = _usable(domain)
        if eval_specs:
            train_parts.append(_Picked(domain, usable))
            lines.append(f"{spec.name}: {len(usable)} images")
            continue
        if len(usable) < 2:
            raise DataError(f"--data {spec.name}: {len(usable)} usable image; holding images out for evaluation needs "
                            "at least 2 (or give --eval-data)")
        n_eval = max(1, min(shares[k], len(usable) // 2))
        order = np.random.default_rng([cfg.seed, SPLIT_SALT, k]).permutation(len(usable))
        eval_parts.append(_Picked(domain, sorted(usable[i] for i in order[:n_eval])))
        train_parts.append(_Picked(domain, sorted(usable[i] for i in order[n_eval:])))
        lines.append(f"{spec.name}: {len(usable) - n_eval} images, {n_eval} held out")
    for k, spec in enumerate(eval_specs):
        if spec.kind == "procedural":
            eval_parts.append(ProceduralScenes(_procedural_domain(spec), shares[k], seed=EVAL_SEED))
            continue
        domain = _open(spec, cfg)
        usable = _usable(domain)
        if len(usable) > shares[k]:
            pick = np.random.default_rng([cfg.seed, SPLIT_SALT, 1000 + k]).choice(len(usable), shares[k], replace=False)
            usable = sorted(usable[i] for i in pick)
        eval_parts.append(_Picked(domain, usable))
    train: Sequence[Scene] = train_parts[0] if len(train_parts) == 1 else _Concat(train_parts)
    evaluation: Sequence[Scene] = eval_parts[0] if len(eval_parts) == 1 else _Concat(eval_parts)
    if not len(evaluation):
        raise DataError("no held-out scene to evaluate on: raise eval_scenes or give --eval-data")
    if cfg.jitter > 0:
        train = JitteredScenes(train, strength=cfg.jitter, seed=cfg.seed)
    description = "; ".join(lines) + f"; evaluation: {len(evaluation)} held-out images"
    return TrainingData(train, evaluation, description)
