"""The edit chooser of a run: the one-shot stage of ``ppd train``.

A run with one-shot starts (``fm_starts > 0``) trains its defender on feature-matching
(FM) sets; this stage fits the run's own :class:`ppd.oneshot_quality.EditChooser`, the
mask-quality score that picks the one-shot output among FM's points, their single edits
and the defender's output (``ppd bench --protocol oneshot``;
:func:`ppd.oneshot_quality.refine_with_reference`). It needs the ground truth, which the
training data has, and no network training: per training object (up to
``chooser_pairs``, drawn by the run's seed), the object's reference
(:class:`ppd.data.references.ReferencePicker`, as the FM starts draw it), its FM set
and a candidate table (:func:`ppd.oneshot_quality.candidate_table`; about 0.5 s per
object with the bundled model on one core). The chooser is then measured on the held-out
objects the evaluation uses (one per evaluation image): mean IoU of FM and of the
chooser's pick among FM and its single edits, in ``edit_chooser.json``'s ``meta`` and
the run's final metrics (``fm_choice_iou``).

The chooser depends on the segmenter and the data, not on the agents: a run resumed with
more rounds keeps it; a different ``chooser_pairs`` refits it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ppd.oneshot_quality import CHOOSER_FILE, EditChooser, candidate_table

logger = logging.getLogger(__name__)

__all__ = ["CHOOSER_SEED_OFFSET", "fit_run_chooser", "load_run_chooser"]

#: Added to the run's seed for the draw of the fitting objects.
CHOOSER_SEED_OFFSET = 7_331


def _fitting_objects(world: Any, n: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``n`` distinct (image, object) pairs of ``world``, drawn by ``seed``: the
    images in a random order, one random object of each per sweep, until ``n`` or no
    object is left."""
    rng = np.random.default_rng([seed, CHOOSER_SEED_OFFSET])
    order = [int(i) for i in rng.permutation(len(world.dataset))]
    left: dict[int, list[int]] = {}
    out: list[tuple[int, int]] = []
    while len(out) < n:
        before = len(out)
        for i in order:
            if i not in left:
                left[i] = [int(o) for o in rng.permutation(world.image(i).scene.num_objects)]
            if left[i]:
                out.append((i, left[i].pop()))
                if len(out) >= n:
                    break
        if len(out) == before:
            break
    return out


def _one_shot_tables(segmenter: Any, world: Any, objects: list[tuple[int, int]], tick: Callable[[], Any] | None):
    """:func:`~ppd.oneshot_quality.candidate_table` of the FM set of each of ``objects``
    with a reference (ground truth: the object's mask; the image's embedding as the world
    holds it)."""
    tables = []
    for i, obj in objects:
        rec = world.image(i)
        found = world.fm_starts.reference_prompts(rec, obj)
        if found is not None:
            tables.append(candidate_table(segmenter, found[0], found[1], rec.scene.image, rec.scene.masks[obj],
                                          found[2], found[3], embedding=rec.embedding))
        if tick is not None:
            tick()
    return tables


def load_run_chooser(out: str | Path, pairs: int) -> EditChooser | None:
    """The run's chooser when ``out`` holds one fitted on ``pairs`` objects, else None."""
    path = Path(out) / CHOOSER_FILE
    if not path.is_file():
        return None
    try:
        chooser = EditChooser.load(path)
    except (ValueError, KeyError) as exc:
        logger.warning("%s: %s; fitting it again", path, exc)
        return None
    return chooser if chooser.meta.get("objects_asked") == pairs else None


def fit_run_chooser(cfg: Any, segmenter: Any, world: Any, eval_world: Any,
                    progress: Callable[[str, int], Callable[..., Any]] | None = None) -> EditChooser:
    """Fit the run's chooser on ``cfg.chooser_pairs`` training objects of ``world`` and
    measure it on ``eval_world``'s evaluation objects (module docstring); both worlds
    need ``fm_starts``. ``progress(description, total) -> tick(n=1)``: a bar per step."""
    from ppd.agents.evaluation import eval_items

    t0 = time.time()
    objects = _fitting_objects(world, cfg.chooser_pairs, cfg.seed)
    tables = _one_shot_tables(segmenter, world, objects,
                              progress("edit chooser: fitting objects", len(objects)) if progress else None)
    if not tables:
        raise ValueError("no training object has a one-shot reference, so the edit chooser has nothing to fit on "
                         "(a class needs two images of it; set chooser_pairs=0 to skip this stage)")
    chooser = EditChooser.fit(tables, meta={"objects_asked": cfg.chooser_pairs, "segmenter": segmenter.name})
    held_out = [(rec.index, obj) for rec, obj, _, _ in eval_items(eval_world, cfg)]
    held = _one_shot_tables(segmenter, eval_world, held_out,
                            progress("edit chooser: held-out objects", len(held_out)) if progress else None)
    fm = [ious[0] for _, ious in held]  # the first candidate is the FM set itself
    chosen = [ious[chooser.pick(x)] for x, ious in held]
    chooser.meta.update({"eval_objects": len(fm), "eval_fm_iou": float(np.mean(fm)) if fm else None,
                         "eval_choice_iou": float(np.mean(chosen)) if chosen else None,
                         "time_s": round(time.time() - t0, 1)})
    logger.info("edit chooser: %d fitting objects; held-out FM %.3f -> chosen %.3f (%d objects)", len(tables),
                chooser.meta["eval_fm_iou"] or float("nan"), chooser.meta["eval_choice_iou"] or float("nan"), len(fm))
    return chooser
