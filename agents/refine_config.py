"""Every refine option in one dataclass, :class:`RefineConfig`, and its command-line flags.

The field docstrings are the ``ppd refine`` help (and the benches' help for the same
flags); ``ppd refine`` saves the config it ran with as ``refine_config.yaml`` beside its
outputs, and reads one with ``--config FILE`` (the flags given override it).
:meth:`~ppd.agents.defender.PromptDefender.load` takes one (``config=RefineConfig(...)``)
or the same options as keyword arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from ppd.agents.label_filter import FILTER_ACTIONS, check_relabel_gate, check_threshold
from ppd.config import field_docs, load_config_file

__all__ = [
    "DEFAULT_CONSENSUS",
    "DEFAULT_CONSENSUS_QUORUM",
    "DEFAULT_KEEP_CONSISTENT",
    "DEFAULT_MIN_SCORE_GAIN",
    "DEFAULT_POLISH",
    "DEFAULT_SELECT",
    "INFERENCE_OPTIONS",
    "SELECT_RULES",
    "RefineConfig",
    "add_inference_arguments",
    "add_refine_arguments",
    "inference_options",
    "refine_config_from_args",
]

#: How :meth:`PromptDefender.refine` picks its output among the prompt states of the
#: greedy rollout: ``"last"``, the state where the defender stopped; ``"score"``, the
#: visited state (input included) with SAM's highest predicted IoU.
SELECT_RULES = ("last", "score")

#: The default rule: measured better than ``"last"`` in-domain for each of four training
#: seeds, and on 23 of their 24 (seed, domain) pairs.
DEFAULT_SELECT = "score"

#: Whether the defender polishes its output by default (``polish``). Off: on the bundled
#: defender it raised defended IoU over a panel of four attackers from 80% to 84% of
#: ideal and left coarse sets level, but made refine 43% slower (70.6 -> 101.0 ms median,
#: 2 threads), past the 100 ms target.
DEFAULT_POLISH = False

#: Whether the defender checks its output against a consensus of the input by default
#: (``consensus``). On, with the quorum below: it raises recovery from attacked sets
#: (default recipe, 4 seeds: 87.6 -> 94.8% of ideal; bundled defender over four
#: attackers: 80 -> 96%) and leaves refined coarse sets about level (bundled, 6 domains:
#: mean 0.518 -> 0.512; 0.494 without the quorum), for about 20 ms more per refine
#: (bundled, 2 threads: 74-91 -> 95.5-112 ms median).
DEFAULT_CONSENSUS = True

#: Whether the defender returns a self-consistent input unchanged by default
#: (``keep_consistent``). On: over nine prompt generators on six domains (bundled
#: defender, 30 scenes each) the mean refined-minus-input IoU rose on five (texture
#: -0.033 -> -0.010, alt -0.009 -> +0.007, lowcontrast -0.079 -> -0.063) and fell on thin
#: by 0.002, with recovery from attacked sets and refined coarse sets of the defense bench
#: unchanged; no cost on the defense bench's sets (the vote is the consensus check's).
DEFAULT_KEEP_CONSISTENT = True

#: The default ``min_score_gain``: the refined set is returned only if SAM's predicted IoU
#: for it is at most 0.05 below the input's, or its mask agrees with more input prompts
#: than the input's mask. Over nine prompt generators (bundled defender, 30 scenes per
#: domain) the mean refined-minus-input IoU rose on five of six domains and held on train
#: (texture -0.010 -> +0.001, lowcontrast -0.063 -> -0.046); on the defense bench,
#: recovery from attacked sets unchanged (four seeds, 94.8%) and refined coarse sets level
#: or up. A tolerance of 0 or a positive margin (0.02), or the tolerance without the
#: agreement test, costs attacked sets up to 0.05: wrong clicks can make SAM confidently
#: segment the wrong object, and the recovered set then scores below it.
DEFAULT_MIN_SCORE_GAIN: float | None = -0.05

#: The share of the input's prompts that must agree with the consensus mask before the
#: consensus check acts (``consensus_quorum``).
DEFAULT_CONSENSUS_QUORUM = 2 / 3


def check_consensus_quorum(value: Any) -> float:
    """``consensus_quorum``: a number in [0, 1] as a float; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"consensus_quorum must be a number in [0, 1], got {value!r}")
    return float(value)


def check_score_gain(value: Any) -> float | None:
    """``min_score_gain``: None, or a number in (-1, 1) as a float; else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not -1.0 < value < 1.0:
        raise ValueError(f"min_score_gain must be a number in (-1, 1) or None (null in a YAML file), got {value!r}")
    return float(value)


def check_select(select: Any, patience: Any) -> tuple[str, int | None]:
    """``select`` and ``patience``: a rule of :data:`SELECT_RULES`, and None or an integer
    >= 1 that needs ``select="score"``; else ValueError."""
    if select not in SELECT_RULES:
        raise ValueError(f"select must be one of {SELECT_RULES}, got {select!r}")
    if patience is not None and (isinstance(patience, bool) or int(patience) != patience or patience < 1):
        raise ValueError(f"patience must be an integer >= 1 or None, got {patience!r}")
    if patience is not None and select != "score":
        raise ValueError(f'patience counts steps without a better score: it needs select="score", got {select!r}')
    return select, None if patience is None else int(patience)


@dataclass
class RefineConfig:
    """Every option of refinement (``ppd refine``, :meth:`PromptDefender.load`, the benches)."""

    select: str = DEFAULT_SELECT
    """output: 'score', the visited prompt set with SAM's highest predicted IoU along the rollout, input
    included; 'last', the prompts where the defender stopped"""
    patience: int | None = None
    """with select 'score': end the rollout after this many steps in a row without a better predicted IoU
    (faster; default none: run until the defender stops)"""
    max_steps: int | None = None
    """step budget of each prompt set (default none: the training budget, or max(K, 12))"""
    polish: bool = DEFAULT_POLISH
    """after the defender, drop prompts one at a time while that raises SAM's predicted IoU (a greedy
    removal from its output)"""
    consensus: bool = DEFAULT_CONSENSUS
    """check the output against the input's majority: if SAM's one-click mask that agrees with the most
    input points agrees with at least the consensus quorum of them and with more than the refined mask,
    refine again without the points that disagree with it and keep whichever mask agrees with more input
    points (it assumes most labels are right)"""
    consensus_quorum: float = DEFAULT_CONSENSUS_QUORUM
    """the consensus check acts only when that mask agrees with at least this share of the input points,
    in [0, 1] (0: whenever it agrees with more than the refined mask)"""
    keep_consistent: bool = DEFAULT_KEEP_CONSISTENT
    """return the input unchanged when nothing in it points to a wrong click: SAM's mask of the whole
    input agrees with every point (a positive inside, a negative outside), and so does the one-click mask
    that agrees with the most of them"""
    min_score_gain: float | None = DEFAULT_MIN_SCORE_GAIN
    """guard for good clicks: return the input unchanged unless SAM's predicted IoU of the refined set is
    at least the input's plus G, in (-1, 1), or its mask agrees with more input points than the input's
    mask; a negative G tolerates that much of a drop ('off': no guard)"""
    use_filter: bool = True
    """whether the run's wrong-label filter (label_filter.zip) acts before the defender; --no-filter turns it
    off, so the defender acts on the input as is"""
    filter_threshold: float | None = None
    """the filter's wrong-label probability above which it acts on a prompt, in (0, 1] (default none: the
    one selected in training, label_filter.json)"""
    filter_action: str | None = None
    """what the filter does to those prompts, remove or relabel (default none: the action selected in
    training, label_filter.json)"""
    filter_relabel_gate: float | None = None
    """after the filter, the defender relabels only prompts whose wrong-label probability exceeds this, in
    [0, 1); 0 lets it relabel any (default none: the gate selected in training, label_filter.json; 0 for
    runs whose label_filter.json names no gate)"""

    def __post_init__(self) -> None:
        for name in ("polish", "consensus", "keep_consistent", "use_filter"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self.consensus_quorum = check_consensus_quorum(self.consensus_quorum)
        self.min_score_gain = check_score_gain(self.min_score_gain)
        self.select, self.patience = check_select(self.select, self.patience)
        if self.max_steps is not None:
            if (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, (int, float))
                    or int(self.max_steps) != self.max_steps or self.max_steps < 0):
                raise ValueError(f"max_steps (the refine step budget, --max-steps) must be an integer >= 0, "
                                 f"got {self.max_steps!r}")
            self.max_steps = int(self.max_steps)
        overrides = self.filter_overrides
        if overrides and not self.use_filter:
            raise ValueError(f"{' and '.join(overrides)} set with use_filter=False: the filter is off")
        if self.filter_threshold is not None:
            self.filter_threshold = check_threshold(self.filter_threshold, "the label filter's threshold")
        if self.filter_action is not None and self.filter_action not in FILTER_ACTIONS:
            raise ValueError(f"the label filter's action must be one of {FILTER_ACTIONS}, got {self.filter_action!r}")
        if self.filter_relabel_gate is not None:
            self.filter_relabel_gate = check_relabel_gate(self.filter_relabel_gate, "the label filter's relabel gate")

    @property
    def filter_overrides(self) -> list[str]:
        """The names of the label-filter settings given (not None)."""
        return [n for n in ("filter_threshold", "filter_action", "filter_relabel_gate") if getattr(self, n) is not None]

    def defender_options(self) -> dict[str, Any]:
        """The :class:`~ppd.agents.defender.PromptDefender` constructor's options."""
        return {n: getattr(self, n) for n in ("select", "patience", *INFERENCE_OPTIONS)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML (atomically); :meth:`from_file` reads it back."""
        from ppd.io import save_text  # ppd.io loads torch

        return save_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False), path)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> RefineConfig:
        """A config from a YAML / JSON file of its fields (as :meth:`save` writes; a field
        the file lacks takes its default), with ``overrides`` (field values) replacing
        the file's.

        Raises:
            FileNotFoundError: no such file.
            ValueError: a file that cannot be parsed or holds no mapping, a key that is
                not a field, or a value out of its range; each names the file.
        """
        data = load_config_file(path)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown field(s) in {path}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        try:
            return cls(**{**data, **overrides})
        except ValueError as exc:
            given = f" and the options given ({', '.join(sorted(overrides))})" if overrides else ""
            raise ValueError(f"refine options of {path}{given}: {exc}") from None


#: ``RefineConfig`` fields of the steps around the rollout, set by
#: :func:`add_inference_arguments`' flags.
INFERENCE_OPTIONS = ("polish", "consensus", "consensus_quorum", "keep_consistent", "min_score_gain")


# ----------------------------------------------------------------------------- flags
def _share(text: str) -> float:
    """argparse type of ``--consensus-quorum``: :func:`check_consensus_quorum` of a number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    try:
        return check_consensus_quorum(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}") from None


def _score_gain(text: str) -> float | None:
    """argparse type of ``--min-score-gain``: :func:`check_score_gain` of a number, or
    ``off`` / ``none`` (None)."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return check_score_gain(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be in (-1, 1) or 'off', got {text!r}") from None


#: Per field, what its flag needs besides ``--FIELD-NAME`` and the docstring: other
#: names, type, choices, metavar, the action of switches, and how the default reads
#: ("": the docstring says it).
_FLAGS: dict[str, dict[str, Any]] = {
    "select": dict(choices=SELECT_RULES),
    "patience": dict(type=int, shown=""),
    "max_steps": dict(type=int, shown=""),
    "polish": dict(action=argparse.BooleanOptionalAction),
    "consensus": dict(action=argparse.BooleanOptionalAction),
    "consensus_quorum": dict(type=_share, metavar="Q", shown=f"{DEFAULT_CONSENSUS_QUORUM:.3g}"),
    "keep_consistent": dict(action=argparse.BooleanOptionalAction),
    "min_score_gain": dict(type=_score_gain, metavar="G"),
    "use_filter": dict(flags=("--no-filter",), action="store_false"),
    "filter_threshold": dict(type=float, shown=""),
    "filter_action": dict(choices=FILTER_ACTIONS, shown=""),
    "filter_relabel_gate": dict(type=float, shown=""),
}


def add_refine_arguments(p: argparse.ArgumentParser | Any, names: Sequence[str] | None = None,
                         defaults: bool = True) -> None:
    """One flag per :class:`RefineConfig` field of ``names`` (default: all), its help the
    field's docstring, its default the field's (``--polish / --no-polish`` style for
    switches, ``--no-filter`` for ``use_filter``); :func:`refine_config_from_args` reads
    them back.

    ``defaults=False``: a flag not given sets no attribute at all (``argparse.SUPPRESS``),
    so that "not given" differs from every value, None included (``--min-score-gain off``):
    :func:`refine_config_from_args` then keeps a config file's value for it. The help
    still shows the field's default."""
    docs = field_docs(RefineConfig)
    fields = {f.name: f for f in dataclasses.fields(RefineConfig)}
    for name in names or tuple(fields):
        spec = dict(_FLAGS[name])
        default = fields[name].default
        flags = spec.pop("flags", ("--" + name.replace("_", "-"),))
        shown = spec.pop("shown", None)
        if shown is None:
            shown = ("on" if default else "off") if isinstance(default, bool) else default
        if spec.get("action") == "store_false":
            shown = "on"
        help_ = (docs[name] if shown == "" else f"{docs[name]} (default: {shown})").replace("%", "%%")
        p.add_argument(*flags, dest=name, default=default if defaults else argparse.SUPPRESS, help=help_, **spec)


def refine_config_from_args(args: argparse.Namespace, config_file: str | os.PathLike | None = None) -> RefineConfig:
    """A :class:`RefineConfig` from the flags of :func:`add_refine_arguments`: the
    defaults, then the fields of ``config_file`` (a YAML / JSON file, as
    :meth:`RefineConfig.from_file` reads), then the flags ``args`` holds (later wins;
    with ``defaults=False`` a flag not given holds nothing, so the file's value stays).

    Raises:
        FileNotFoundError, ValueError: see :meth:`RefineConfig.from_file`; a value out of
            its range.
    """
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RefineConfig) if hasattr(args, f.name)}
    if config_file is not None:
        return RefineConfig.from_file(config_file, **given)
    return RefineConfig(**given)


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of the steps around the rollout (``--polish``, ``--consensus``,
    ``--consensus-quorum``, ``--keep-consistent``, ``--min-score-gain``), for ``ppd refine``
    and the benches; :func:`inference_options` reads them back."""
    add_refine_arguments(p, INFERENCE_OPTIONS)


def inference_options(args: argparse.Namespace) -> dict[str, Any]:
    """``PromptDefender.load`` keyword arguments from :func:`add_inference_arguments`'
    flags (checked as :class:`RefineConfig` checks them; a flag without a value in
    ``args``, see ``add_refine_arguments(defaults=False)``, takes its default)."""
    cfg = RefineConfig(**{name: getattr(args, name) for name in INFERENCE_OPTIONS if hasattr(args, name)})
    return {name: getattr(cfg, name) for name in INFERENCE_OPTIONS}


def add_polish_argument(p: argparse.ArgumentParser) -> None:
    """``--polish / --no-polish`` (``RefineConfig.polish``)."""
    add_refine_arguments(p, ("polish",))


def add_consensus_argument(p: argparse.ArgumentParser) -> None:
    """``--consensus / --no-consensus`` and ``--consensus-quorum`` (``RefineConfig.consensus``,
    ``consensus_quorum``)."""
    add_refine_arguments(p, ("consensus", "consensus_quorum"))


def add_keep_consistent_argument(p: argparse.ArgumentParser) -> None:
    """``--keep-consistent / --no-keep-consistent`` (``RefineConfig.keep_consistent``)."""
    add_refine_arguments(p, ("keep_consistent",))


def add_min_score_gain_argument(p: argparse.ArgumentParser) -> None:
    """``--min-score-gain G|off`` (``RefineConfig.min_score_gain``)."""
    add_refine_arguments(p, ("min_score_gain",))
