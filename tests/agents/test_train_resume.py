"""A training run stopped between any two of its writes loads and resumes to the result
of an uninterrupted run; --resume refuses settings that contradict the run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from ppd.agents.label_filter import FILTER_FILE, load_label_filter
from ppd.agents.run_commit import STATE_FILE, commit_round, discard_uncommitted, finish_commit, read_state, stage
from ppd.agents.train import TrainConfig, train
from ppd.agents.train_folder import resume_conflicts
from ppd.agents.train_resume import RESUME_FILE, load_state, remap_graph_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tiny_checkpoint, **kw) -> TrainConfig:
    base = dict(
        seed=0, device="cpu", checkpoint=tiny_checkpoint, n_envs=2, rounds=2, attacker_steps=16, defender_steps=16,
        scenes=3, eval_scenes=1, eval_every=0, learning_starts=8, buffer_size=128, batch_size=8,
        target_update_interval=16, attacker_max_steps=2, defender_max_steps=3, hidden_dim=16, n_examples=1,
        filter_scenes=1, filter_epochs=1, chooser_pairs=2, threads=1, save_replay_buffer=True,
    )
    base.update(kw)
    return TrainConfig(**base)


def _outcome(metrics: dict) -> dict:
    """What must not depend on where a run was stopped: the final and the per-round
    evaluations, the agents' step counts and the filter's selection."""
    filt = metrics["label_filter"] or {}
    return {
        "final": metrics["final"],
        "history": [{k: v for k, v in h.items() if k != "time_s"} for h in metrics["history"]],
        "filter": {k: v for k, v in filt.items() if not k.startswith("time")},
    }


@pytest.fixture(scope="module")
def reference(tiny_segmenter, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    return _outcome(train(_config(tiny_checkpoint), out, segmenter=tiny_segmenter))


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (BaseException: no handler catches it)."""


def _stop_before_rename(monkeypatch, n: int) -> None:
    """Make the n-th ``os.replace`` of the process (0-based; every file of a run appears
    by one: atomic writes and the commit's renames) raise :class:`_Killed`."""
    real = os.replace
    count = {"n": 0}

    def replace(src, dst):
        if count["n"] == n:
            count["n"] += 1
            raise _Killed(f"stopped before replace #{n}: {dst}")
        count["n"] += 1
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _stop_and_resume(stops, reference, segmenter, cfg, out) -> None:
    """Run ``cfg`` into ``out`` stopped before rename ``stops[0]``, resume it stopped
    before rename ``stops[1]`` of that attempt, and so on; after each stop the run loads
    (its defender, with the label filter its state commits) and the last resume ends
    with the uninterrupted run's results and no staged file left."""
    from ppd.agents.defender import PromptDefender

    for i, stop in enumerate(stops):
        with pytest.MonkeyPatch.context() as m:
            _stop_before_rename(m, stop)
            with pytest.raises(_Killed):
                train(cfg, out, resume=i > 0, segmenter=segmenter)
        state = read_state(out)
        if (out / "defender.zip").is_file():
            d = PromptDefender.load(out, segmenter=segmenter, device="cpu")
            assert (d.label_filter is not None) == bool(state and state.get("label_filter"))
    metrics = train(cfg, out, resume=True, segmenter=segmenter)
    assert _outcome(metrics) == reference
    assert not [p.name for p in out.iterdir() if ".round" in p.name]  # no staged file is left
    assert load_label_filter(out, "cpu") is not None
    assert json.loads((out / "metrics.json").read_text())["final"] == reference["final"]


def test_a_run_stopped_between_writes_loads_and_resumes_to_the_same_result(
        reference, tiny_segmenter, tiny_checkpoint, tmp_path):
    # A fresh run's renames: 0 config.yaml; round 1: 1-5 its files staged, 6 state.json
    # (the commit), 7-11 the staged files renamed; round 2 the same at 12-22; the label
    # filter: 23-24 staged, 25 state.json, 26-27 renamed; 28 examples.png, 29 metrics.json.
    # A resume from round 1 starts at 0 config.yaml, round 2 at 1-11, the filter at 12-16.
    # Stopped after round 1's commit, before its renames end; then after the filter's
    # commit, between its two renames.
    out = tmp_path / "run"
    _stop_and_resume((9, 16), reference, tiny_segmenter, _config(tiny_checkpoint), out)
    # a damaged filter network is an error that names it (not the archive reader's own)
    with open(out / FILTER_FILE, "r+b") as f:
        f.truncate(200)
    with pytest.raises(ValueError, match=f"{out / FILTER_FILE}: cannot load the label filter network"):
        load_label_filter(out, "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("stops", [
    (1,), (3,),      # round 1: attacker.zip staged, defender.zip not yet (resumed from the first round)
    (6,),            # round 1: every file staged, state.json not yet written
    (7,), (11,),     # round 1 committed, its renames not all done
    (16,),           # round 2: staged but the resume state, not committed
    (17,), (22,),    # round 2 committed, renames not done
    (23,), (24,),    # label filter: network staged, metadata not yet / both staged, not committed
    (26,), (27,),    # label filter committed, not renamed / label_filter.zip renamed, .json not yet
    (28,), (29,),    # examples.png written, metrics.json not yet
    (3, 3, 4, 14, 15),  # stopped five times
])
def test_stopped_at_every_kind_of_write(stops, reference, tiny_segmenter, tiny_checkpoint, tmp_path):
    _stop_and_resume(stops, reference, tiny_segmenter, _config(tiny_checkpoint), tmp_path / "run")


def test_commit_files_and_leftovers(tmp_path, monkeypatch):
    """Unit: staged files become final only with the state that names them; a kill
    before the commit leaves the previous round; one during the renames is finished."""
    out = tmp_path
    (out / "a.txt").write_text("round 1")
    state1 = {"round": 1, "history": []}
    files = {"a.txt": stage(out, "a.txt", 2, lambda p: open(p, "w").write("round 2")),
             "b.txt": stage(out, "b.txt", 2, lambda p: open(p, "w").write("round 2"))}
    # a kill here: nothing committed, the staged files are deleted, round 1 stays
    assert discard_uncommitted(out, state1) == sorted(files.values())
    assert (out / "a.txt").read_text() == "round 1" and not (out / "b.txt").exists()
    files = {"a.txt": stage(out, "a.txt", 2, lambda p: open(p, "w").write("round 2")),
             "b.txt": stage(out, "b.txt", 2, lambda p: open(p, "w").write("round 2"))}
    real = os.replace
    calls = []

    def replace(src, dst):  # the state's rename happens, then the kill
        if calls:
            raise _Killed()
        calls.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        commit_round(out, {"round": 2, "history": []}, files)
    monkeypatch.setattr(os, "replace", real)
    state = read_state(out)
    assert state["round"] == 2 and state["commit"]["files"] == files
    assert (out / "a.txt").read_text() == "round 1"  # not renamed yet
    assert discard_uncommitted(out, state) == []  # committed staged files stay
    finish_commit(out, state)
    finish_commit(out, state)  # idempotent
    assert (out / "a.txt").read_text() == "round 2" and (out / "b.txt").read_text() == "round 2"
    (out / STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"cannot read {out / STATE_FILE}"):
        read_state(out)


def test_graph_ids_are_mapped_and_unknown_ones_refused():
    obs = {"image_id": np.array([[3.0], [5.0], [3.0], [0.0]], np.float32)}
    remap_graph_ids(obs, {3: 5, 5: 3}, used=3)  # a swap: simultaneous, not sequential
    assert obs["image_id"][:, 0].tolist() == [5.0, 3.0, 5.0, 0.0]  # the unused row is left
    with pytest.raises(ValueError, match=r"graph ids \[7\]"):
        remap_graph_ids({"image_id": np.array([[7.0]], np.float32)}, {3: 5})


def test_resume_state_file_never_unpickles(tmp_path):
    """A resume state file holding a pickle is refused with a message naming it."""
    path = tmp_path / RESUME_FILE
    np.savez(path, __skeleton__=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match=f"cannot read the resume state {path}"):
        load_state(path)


def test_resume_conflicts_rules(tiny_checkpoint):
    cfg = _config(tiny_checkpoint)
    saved = yaml.safe_load(yaml.safe_dump({**cfg.to_dict(), "grid": 16, "unknown_later_field": 1}))
    assert resume_conflicts(saved, cfg, 2, has_filter=True) == []  # grid 0: the run's resolved grid
    changed = TrainConfig(**{**cfg.to_dict(), "seed": 7, "hidden_dim": 64, "device": "cuda", "threads": 2})
    assert resume_conflicts(saved, changed, 2, True) == ["seed: run 0, now 7", "hidden_dim: run 16, now 64"]
    assert resume_conflicts(saved, TrainConfig(**{**cfg.to_dict(), "rounds": 5}), 2, True) == []
    assert resume_conflicts(saved, TrainConfig(**{**cfg.to_dict(), "rounds": 1}), 2, True) == [
        "rounds: the run completed 2, now 1"]
    more_filter = TrainConfig(**{**cfg.to_dict(), "filter_scenes": 9})
    assert resume_conflicts(saved, more_filter, 2, has_filter=True) == ["filter_scenes: run 1, now 9"]
    assert resume_conflicts(saved, more_filter, 2, has_filter=False) == []  # no filter yet: its stage is to come
    assert resume_conflicts(saved, TrainConfig(**{**cfg.to_dict(), "filter_scenes": 9, "rounds": 3}), 2, True) == []
    del saved["seed"]  # a run written before a field existed: not compared
    assert resume_conflicts(saved, changed, 2, True) == ["hidden_dim: run 16, now 64"]


def test_resume_refuses_contradicting_settings_and_keeps_the_run(reference, tiny_segmenter, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    cfg = _config(tiny_checkpoint, rounds=1, filter_scenes=0)
    train(cfg, out, segmenter=tiny_segmenter)
    before = {name: (out / name).read_bytes() for name in ("config.yaml", "metrics.json", STATE_FILE)}
    bad = TrainConfig(**{**cfg.to_dict(), "seed": 7, "hidden_dim": 64})
    with pytest.raises(ValueError, match=r"cannot resume .*seed: run 0, now 7; hidden_dim: run 16, now 64"):
        train(bad, out, resume=True, segmenter=tiny_segmenter)
    assert {name: (out / name).read_bytes() for name in before} == before
    # a run folder copied elsewhere resumes there (the folder's name is no setting)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    metrics = train(TrainConfig(**{**cfg.to_dict(), "n_examples": 2}), moved, resume=True, segmenter=tiny_segmenter)
    assert metrics["final"] == json.loads(before["metrics.json"])["final"]
