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

from ppd.oneshot_quality import CHOOSER_FILE, EditChooser, candidate_table, choose_edit

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


def _one_shot_items(world: Any, objects: list[tuple[int, int]]):
    """``(target image, its object's mask, reference image, reference mask, FM coords,
    FM labels)`` of each of ``objects`` with a reference."""
    for i, obj in objects:
        rec = world.image(i)
        ref = world.fm_starts.picker(i, obj)
        prompts = world.fm_starts.prompts(rec, obj)
        if ref is None or prompts is None:
            continue
        yield rec.scene.image, rec.scene.masks[obj], ref[0], ref[1], prompts[0], prompts[1]


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
    from ppd.metrics import iou

    t0 = time.time()
    tables = []
    objects = _fitting_objects(world, cfg.chooser_pairs, cfg.seed)
    tick = progress("edit chooser: fitting objects", len(objects)) if progress else None
    for image, gt, ref_image, ref_mask, coords, labels in _one_shot_items(world, objects):
        tables.append(candidate_table(segmenter, ref_image, ref_mask, image, gt, coords, labels))
        if tick is not None:
            tick()
    if not tables:
        raise ValueError("no training object has a one-shot reference, so the edit chooser has nothing to fit on "
                         "(a class needs two images of it; set chooser_pairs=0 to skip this stage)")
    chooser = EditChooser.fit(tables, meta={"objects_asked": cfg.chooser_pairs, "segmenter": segmenter.name})
    fm, chosen = [], []
    held_out = [(rec.index, obj) for rec, obj, _, _ in eval_items(eval_world, cfg)]
    tick = progress("edit chooser: held-out objects", len(held_out)) if progress else None
    for image, gt, ref_image, ref_mask, coords, labels in _one_shot_items(eval_world, held_out):
        fm.append(float(iou(segmenter.predict(image, coords, labels).masks[0], gt)))
        chosen.append(float(iou(choose_edit(segmenter, chooser, ref_image, ref_mask, image, coords, labels)[2], gt)))
        if tick is not None:
            tick()
    chooser.meta.update({"eval_objects": len(fm), "eval_fm_iou": float(np.mean(fm)) if fm else None,
                         "eval_choice_iou": float(np.mean(chosen)) if chosen else None,
                         "time_s": round(time.time() - t0, 1)})
    logger.info("edit chooser: %d fitting objects; held-out FM %.3f -> chosen %.3f (%d objects)", len(tables),
                chooser.meta["eval_fm_iou"] or float("nan"), chooser.meta["eval_choice_iou"] or float("nan"), len(fm))
    return chooser
