"""The refine pipeline's parts: RefineConfig (options, flags, file), the guards around any
refiner (Guarded), and the shared rollout."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from ppd.agents.baselines import GreedyScoreFilter
from ppd.agents.defender import PromptDefender
from ppd.agents.guards import Guarded
from ppd.agents.refine_config import RefineConfig, add_refine_arguments, refine_config_from_args
from ppd.bench import defender_variant
from test_defender import LABELS, POINTS, FakeSegmenter, ObjectsSegmenter, _xs, run_dir  # noqa: F401  (fixture)

IMAGE = np.zeros((32, 64, 3), np.uint8)


# ----------------------------------------------------------------------------- guards
def test_score_guard_reverts_a_greedy_score_filter_result():
    """Guarded(GreedyScoreFilter): a refined set whose predicted IoU is not at least the
    input's plus min_score_gain, and whose mask follows no more input clicks, comes back
    as the input, with the trace saying so; one within the margin passes unchanged."""
    weights = {10: 0.1, 20: -0.2, 30: -0.05, 40: 0.0, 50: -0.3}
    coords, labels = _xs([10, 20, 30, 40, 50])
    plain = GreedyScoreFilter(FakeSegmenter(weights)).refine(IMAGE, coords, labels)
    assert plain.steps == 3 and plain.score == pytest.approx(0.6)  # input: 0.5 - 0.45 = 0.05
    only_guard = dict(consensus=False, keep_consistent=False)  # the fake has no one-click votes
    seg = FakeSegmenter(weights)
    strict = Guarded(GreedyScoreFilter(seg), RefineConfig(min_score_gain=0.9, **only_guard)).refine(IMAGE, coords, labels)
    assert strict.steps == 0 and strict.kept.all() and strict.score == pytest.approx(0.05)
    assert strict.mask.sum() == 5  # the fake's mask of the 5-point input
    np.testing.assert_array_equal(strict.point_coords, coords)
    assert strict.trace[0] == plain.trace[0] and strict.trace[-1].startswith("reverted by the score guard")
    assert seg.calls == [1, 5, 4, 3, 2, 1]  # the filter's calls, then the input decoded once for the guard
    loose = Guarded(GreedyScoreFilter(FakeSegmenter(weights)), RefineConfig(min_score_gain=0.5, **only_guard))
    res = loose.refine(IMAGE, coords, labels)  # 0.6 >= 0.05 + 0.5: the filter's result
    np.testing.assert_array_equal(res.kept, plain.kept)
    assert res.steps == 3 and res.trace == plain.trace
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        loose.refine(IMAGE, coords, labels, max_steps=-1)


def test_keep_consistent_around_a_greedy_score_filter():
    """Guarded(GreedyScoreFilter) with keep_consistent: a set whose one-click vote and own
    mask agree with every click comes back without running the filter; a set with a
    wrong click is refined (and checked by the consensus)."""
    seg = ObjectsSegmenter()
    guarded = Guarded(GreedyScoreFilter(seg))  # the defender's defaults
    good = np.array([[4, 8], [12, 12], [30, 10]], np.float32), np.array([1, 1, 0])  # two on A, one on the background
    res = guarded.refine(IMAGE, *good)
    assert res.steps == 0 and res.kept.all() and res.trace[0].startswith("kept the input: consistent")
    np.testing.assert_array_equal(res.mask, seg.region(4))
    assert seg.calls == [(2, True), (1, False)]  # the vote (one row per positive) and the input's mask only
    # a wrong positive on B (whose region then swallows two right negatives): the filter
    # keeps it (every removal scores the same), the consensus check refines without it
    coords = np.array([[4, 8], [12, 12], [16, 8], [50, 10], [30, 10], [56, 8], [60, 12]], np.float32)
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    assert GreedyScoreFilter(seg).refine(IMAGE, coords, labels).kept.all()
    res = guarded.refine_many([IMAGE], [coords], [labels])[0]
    np.testing.assert_array_equal(res.kept, [True, True, True, False, True, True, True])
    np.testing.assert_array_equal(res.mask, seg.region(4))
    assert res.steps == 1 and res.trace[0].startswith("consensus: ") and res.trace[0].endswith(", kept")


def test_the_defender_is_its_guards_around_its_rollout(run_dir, tiny_segmenter, random_image):  # noqa: F811
    """PromptDefender.refine == Guarded(the defender without guards, the same options)."""
    d = PromptDefender.load(run_dir, segmenter=tiny_segmenter, device="cpu", select="last")
    bare = defender_variant(d, consensus=False, keep_consistent=False, min_score_gain=None)
    sets = [(POINTS, LABELS), (POINTS[:3], 1 - LABELS[:3])]
    d.world._outcomes.clear()  # both decode the same batches
    a = d.refine_many([random_image] * 2, [c for c, _ in sets], [l for _, l in sets])
    d.world._outcomes.clear()
    b = Guarded(bare, d.refine_config).refine_many([random_image] * 2, [c for c, _ in sets], [l for _, l in sets])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.kept, y.kept)
        np.testing.assert_array_equal(x.point_labels, y.point_labels)
        np.testing.assert_array_equal(x.mask, y.mask)
        assert (x.steps, x.score, x.trace) == (y.steps, y.score, y.trace)


# ----------------------------------------------------------------------------- RefineConfig
def test_refine_config_flags_defaults_and_help():
    """One flag per field with the field's default, its docstring as help; the existing
    spellings (--no-filter, --min-score-gain off, --no-consensus) work; no word about how
    the project was made."""
    p = argparse.ArgumentParser(prog="x")
    add_refine_arguments(p)
    assert refine_config_from_args(p.parse_args([])) == RefineConfig()
    args = p.parse_args(["--no-filter", "--min-score-gain", "off", "--no-consensus", "--select", "last",
                         "--max-steps", "3", "--polish", "--consensus-quorum", "0.5"])
    cfg = refine_config_from_args(args)
    assert cfg == RefineConfig(use_filter=False, min_score_gain=None, consensus=False, select="last", max_steps=3,
                               polish=True, consensus_quorum=0.5)
    text = " ".join(p.format_help().split())
    for f in dataclasses.fields(RefineConfig):
        flag = "--no-filter" if f.name == "use_filter" else "--" + f.name.replace("_", "-")
        assert flag in text, flag
    assert "runs whose label_filter.json names no gate" in text
    with pytest.raises(ValueError, match='needs select="score"'):
        refine_config_from_args(p.parse_args(["--select", "last", "--patience", "2"]))


def test_refine_cli_help_has_every_flag(capsys):
    from ppd.cli import main

    with pytest.raises(SystemExit):
        main(["refine", "--help"])
    text = capsys.readouterr().out
    for flag in ("--defender", "--run", "--no-filter", "--filter-relabel-gate", "--min-score-gain", "--keep-consistent",
                 "--consensus-quorum", "--max-steps", "--patience", "--select", "--polish"):
        assert flag in text, flag
    assert "trained before" not in text  # help states facts, not the history of runs


def test_refine_config_checks_and_file(tmp_path):
    for bad, msg in ((dict(select="best"), "select must be one of"), (dict(patience=0), "patience must be an integer"),
                     (dict(polish=1), "polish must be True or False"), (dict(consensus_quorum=2), "consensus_quorum"),
                     (dict(min_score_gain=1.0), "min_score_gain"),
                     (dict(max_steps=-1), r"max_steps \(the refine step budget, --max-steps\) must be an integer >= 0"),
                     (dict(use_filter=False, filter_action="relabel"), "filter_action set with use_filter=False"),
                     (dict(filter_threshold=0.0), "threshold must be in"), (dict(filter_action="drop"), "action must be one of"),
                     (dict(filter_relabel_gate=1.0), "relabel gate must be in")):
        with pytest.raises(ValueError, match=msg):
            RefineConfig(**bad)
    cfg = RefineConfig(select="last", min_score_gain=None, filter_threshold=0.7, max_steps=4)
    cfg.save(tmp_path / "refine_config.yaml")
    assert RefineConfig.from_file(tmp_path / "refine_config.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("selekt: last\n")
    with pytest.raises(ValueError, match="unknown field"):
        RefineConfig.from_file(tmp_path / "bad.yaml")


def test_load_takes_a_refine_config(run_dir, tiny_segmenter, random_image):  # noqa: F811
    kw = dict(segmenter=tiny_segmenter, device="cpu")
    by_config = PromptDefender.load(run_dir, config=RefineConfig(select="last", min_score_gain=None, max_steps=2), **kw)
    by_keywords = PromptDefender.load(run_dir, select="last", min_score_gain=None, **kw)
    assert by_config.refine_config == RefineConfig(select="last", min_score_gain=None, max_steps=2, use_filter=False)
    assert by_config.default_steps(5) == 2
    a = by_config.refine(random_image, POINTS, LABELS)
    b = by_keywords.refine(random_image, POINTS, LABELS, max_steps=2)
    np.testing.assert_array_equal(a.kept, b.kept)
    assert a.steps == b.steps == 2 and a.trace == b.trace
    with pytest.raises(ValueError, match="either as config= or as keyword arguments"):
        PromptDefender.load(run_dir, config=RefineConfig(), select="last", **kw)


# ----------------------------------------------------------------------------- rollout
def test_one_rollout_implementation():
    """The training loop's, the label filter's and the benches' greedy_rollout is the
    rollout module's, and refine_states steps with the same loop."""
    import inspect

    from ppd.agents import rollout, train
    from ppd.agents.defender import PromptDefender

    assert train.greedy_rollout is rollout.greedy_rollout
    assert "run_episodes" in inspect.getsource(rollout.greedy_rollout)
    assert "run_episodes" in inspect.getsource(PromptDefender.refine_states)
