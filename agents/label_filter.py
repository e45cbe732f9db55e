"""Wrong-label filter (beyond the paper): the defender's network, trained by supervision.

Removing exactly the prompts whose label is wrong by the ground truth (a positive
outside the object, a negative inside it) recovers the ideal prompts' IoU from attacked
sets (the defense bench's ``attacked+oracle`` column), so recovery is a detection
problem. The DQN defender learns detection from a reward on the few hundred scenes of
its training; its auxiliary label head (``label_aux``) reaches a ROC AUC of about 0.88
there and overfits beyond. The same network trained by plain binary cross-entropy on
more scenes generalises better (held-out AUC 0.90 with 800 scenes, against 0.88 for the
RL-trained head of the same run; docs/decisions/0003-wrong-label-filter.md).

:func:`train_label_filter` (the last stage of ``ppd train``) builds it:

1. **Data.** ``filter_scenes`` new training-domain scenes, one object each. Starts per
   scene: the ideal prompts, the trained attacker's greedy result on them, a coarse set
   with the run's ``coarse_kwargs`` and one with randomly drawn noise (point count, flip,
   boundary and outlier rates: prompt generators differ), each followed by
   ``filter_walk`` random valid defender steps (removals, relabels). Every visited state
   is an example; its target is :func:`~ppd.envs.point_prompt_env.label_targets`.
2. **Fit.** A fresh network of the defender's architecture (``label_aux`` head) trains
   on the label loss alone, ``filter_epochs`` passes (Adam 1e-3, batch 64).
3. **Threshold and action.** On as many further held-out scenes as training evaluates
   on (``eval_scenes``; other scenes than those, never trained on), the defender's
   greedy output (``select="score"``) after the filter acted on every prompt whose
   wrong-label probability exceeds t, for t in :data:`THRESHOLDS`, either removing it or
   relabelling it (:data:`FILTER_ACTIONS`), each with every relabel gate g of the
   config (:data:`RELABEL_GATES` by default: the rollout that follows may relabel only
   prompts with probability above g; 0: any), from coarse sets (the run's
   ``coarse_kwargs``) and from attacked sets; the triple with the best mean quality is
   kept. ``1.0`` changes nothing, so a filter that does not help is switched off by its
   own selection. The wrong-label ROC AUC on these scenes is reported, and that of the
   defender's own label head when it has one (``label_aux``).

   Why relabelling is a candidate: a wrong-label prompt with its label flipped is a
   right-label prompt at the same place, so it keeps the click's information; on coarse
   sets (half of their points corrupted) of three of four seeds, removing the prompts
   above 0.5 cost the defender's output 0.07-0.14 IoU against no filter, relabelling
   them at most 0.014 (measured).
   Which of the two serves a run best differed between seeds, so it is selected.

:meth:`ppd.agents.defender.PromptDefender.refine` applies it before the defender's
rollout (one extra Q-network pass, and one extra decoder call when it changes a prompt).
The run folder gets ``label_filter.zip`` (an SB3 DQN file: the network) and
``label_filter.json`` (threshold, action, relabel gate, selection table, held-out AUC;
a file without an action reads as ``"remove"``, one without a relabel gate as 0, no gate).

The code: :mod:`~ppd.agents.label_filter_apply` (the rule on one prompt state, the
candidates, the file names), :mod:`~ppd.agents.label_filter_data` (start states, walks,
observations, probabilities), :mod:`~ppd.agents.label_filter_fit` (fitting and the
selection); this module loads a run's filter and checks its saved settings, and
re-exports the names of the other three.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ppd.agents.archive_check import UnsafeArchiveError
from ppd.agents.dqn import MaskedDQN
from ppd.agents.label_filter_apply import (  # re-exported
    FILTER_ACTIONS,
    FILTER_FILE,
    FILTER_META,
    RELABEL_GATES,
    THRESHOLDS,
    LabelFilter,
    apply_filter,
    candidate_name,
    filter_candidates,
    relabel_gate_mask,
)
from ppd.agents.label_filter_data import (  # re-exported
    CHUNK,
    DATA_SEED_OFFSET,
    SELECT_SEED_OFFSET,
    collect_examples,
    filter_probabilities,
    node_probabilities,
    random_walk,
    scene_starts,
    stacked_observations,
)
from ppd.agents.run_commit import committed_path, read_state
from ppd.agents.label_filter_fit import fit_label_head, label_auc, select_threshold, train_label_filter  # re-exported

logger = logging.getLogger(__name__)

__all__ = [
    "FILTER_ACTIONS",
    "FILTER_FILE",
    "FILTER_META",
    "RELABEL_GATES",
    "THRESHOLDS",
    "LabelFilter",
    "apply_filter",
    "candidate_name",
    "check_relabel_gate",
    "check_threshold",
    "collect_examples",
    "filter_candidates",
    "filter_probabilities",
    "fit_label_head",
    "label_auc",
    "load_label_filter",
    "remove_label_filter",
    "node_probabilities",
    "random_walk",
    "relabel_gate_mask",
    "scene_starts",
    "select_threshold",
    "stacked_observations",
    "train_label_filter",
]


def _unit_number(value: Any) -> float:
    """``value`` as a float, nan when it is not a number (bools are not)."""
    if isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def check_threshold(value: Any, name: str = "threshold") -> float:
    """A wrong-label filter threshold: a number in (0, 1] (1.0 changes nothing), as a
    float; else ValueError naming ``name``. The one range check for the saved metadata,
    ``PromptDefender`` and ``ppd refine --filter-threshold``."""
    v = _unit_number(value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return v


def check_relabel_gate(value: Any, name: str = "relabel_gate") -> float:
    """A relabel gate: a number in [0, 1) (0: any prompt may be relabelled), as a float;
    else ValueError naming ``name`` (as :func:`check_threshold`)."""
    v = _unit_number(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _filter_files(folder: Path) -> tuple[Path, Path] | None:
    """The filter's two files as the run's ``state.json`` commits them: None when the
    state says the run has no filter (any files there are stale), the committed files
    (:func:`~ppd.agents.run_commit.committed_path`) when it names one; a run whose state
    does not say (no ``state.json``, or one written before filters were committed with
    it): the files by their names."""
    try:
        state = read_state(folder)
    except ValueError as exc:
        logger.warning("%s; reading the label filter files by their names", exc)
        state = None
    if state is None or "label_filter" not in state:
        return folder / FILTER_FILE, folder / FILTER_META
    if not state["label_filter"]:
        return None
    return committed_path(folder, state, FILTER_FILE), committed_path(folder, state, FILTER_META)


def remove_label_filter(folder: str | Path) -> None:
    """Delete a run's filter files (the metadata first: a network without it is no
    filter to a run that commits filters with its state)."""
    for name in (FILTER_META, FILTER_FILE):
        (Path(folder) / name).unlink(missing_ok=True)


def load_label_filter(folder: str | Path, device: str | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The filter network and its ``label_filter.json`` from a run folder, or None when
    the run has none (trained before the filter existed, or with ``filter_scenes=0``, or
    whose ``state.json`` says it has none: the filter of earlier rounds).

    Raises:
        ValueError: one of the two files without the other, or an unreadable one; an
            :class:`~ppd.agents.archive_check.UnsafeArchiveError` for a network archive
            that references code a ppd archive never holds (nothing of it is run).
    """
    folder = Path(folder)
    files = _filter_files(folder)
    if files is None:
        return None
    net, meta = files
    if not net.is_file() and not meta.is_file():
        return None
    if not (net.is_file() and meta.is_file()):
        raise ValueError(f"{folder}: {FILTER_FILE} and {FILTER_META} go together, found only "
                         f"{(net if net.is_file() else meta).name}")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        threshold = info["threshold"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta}: unreadable label filter metadata ({exc})") from None
    check_threshold(threshold, f"{meta}: threshold")
    info.setdefault("action", "remove")  # written before relabelling was a candidate
    if info["action"] not in FILTER_ACTIONS:
        raise ValueError(f"{meta}: action must be one of {FILTER_ACTIONS}, got {info['action']!r}")
    info.setdefault("relabel_gate", 0.0)  # written before the gate existed: no gate
    check_relabel_gate(info["relabel_gate"], f"{meta}: relabel_gate")
    try:
        model = MaskedDQN.load(str(net), device=device or "auto")
    except UnsafeArchiveError:
        raise  # names the file and what it references: training again would not help
    except Exception as exc:  # SB3 raises many kinds (AssertionError, BadZipFile, ...) for a damaged archive
        raise ValueError(f"{net}: cannot load the label filter network ({type(exc).__name__}: {exc}); "
                         "train it again with `ppd train --resume`") from None
    if not getattr(model.policy.q_net, "label_aux", False):
        raise ValueError(f"{net}: this network has no label head")
    return model, info
