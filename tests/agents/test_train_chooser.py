"""The edit chooser stage of ppd train: fitted on the run's one-shot objects, saved, measured, kept on resume."""

from __future__ import annotations

import numpy as np
import pytest

from ppd.agents.train import TrainConfig, train
from ppd.agents.train_chooser import _fitting_objects, load_run_chooser
from ppd.agents.train_folder import clear_run
from ppd.envs.world import PromptWorld
from ppd.data.scenes import ProceduralScenes
from ppd.oneshot_quality import CHOOSER_FILE, FEATURES, EditChooser, load_chooser

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tiny_checkpoint, **kw) -> TrainConfig:
    base = dict(seed=0, device="cpu", checkpoint=tiny_checkpoint, n_envs=2, rounds=1, attacker_steps=8,
                defender_steps=8, scenes=3, eval_scenes=2, eval_every=0, learning_starts=4, buffer_size=64,
                batch_size=4, target_update_interval=8, attacker_max_steps=2, defender_max_steps=2, hidden_dim=8,
                n_examples=1, filter_scenes=0, fm_starts=0.5, chooser_pairs=4, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_fitting_objects_are_distinct_and_spread_over_images(tiny_segmenter):
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 3, seed=0))
    counts = [world.image(i).scene.num_objects for i in range(3)]
    objs = _fitting_objects(world, 1000, seed=0)
    assert len(objs) == len(set(objs)) == sum(counts)  # every object once, then no more
    assert {i for i, _ in objs[:3]} == {0, 1, 2}  # one per image per sweep
    assert _fitting_objects(world, 2, seed=0) == objs[:2]  # seeded


def test_a_run_with_one_shot_starts_fits_saves_and_keeps_its_chooser(tmp_path, tiny_segmenter, tiny_checkpoint):
    out = tmp_path / "run"
    reports = []
    bars: dict[str, list[int]] = {}

    def progress(desc, total):
        bars[desc] = [total, 0]
        return lambda n=1: bars[desc].__setitem__(1, bars[desc][1] + n)

    metrics = train(_config(tiny_checkpoint), out, segmenter=tiny_segmenter, progress=progress, report=reports.append)
    meta = metrics["edit_chooser"]
    assert (out / CHOOSER_FILE).is_file() and meta["pairs"] == 4 and meta["objects_asked"] == 4
    assert meta["eval_objects"] == 2 and 0 <= meta["eval_fm_iou"] <= 1 and 0 <= meta["eval_choice_iou"] <= 1
    assert metrics["final"]["fm_choice_iou"] == meta["eval_choice_iou"]
    assert bars["edit chooser: fitting objects"] == [4, 4] and bars["edit chooser: held-out objects"] == [2, 2]
    chooser = load_chooser(out)
    assert chooser.weights.shape == (2 * len(FEATURES) + 1,) and np.isfinite(chooser.weights).all()
    ended = [r for r in reports if r.phase == "edit chooser" and r.done]
    assert len(ended) == 1 and "loaded" not in ended[0].text
    # resumed with nothing left to do: the saved chooser is read, not fitted again
    before = (out / CHOOSER_FILE).read_bytes()
    reports.clear()
    again = train(_config(tiny_checkpoint), out, resume=True, segmenter=tiny_segmenter, report=reports.append)
    assert (out / CHOOSER_FILE).read_bytes() == before and again["edit_chooser"] == meta
    assert any(r.phase == "edit chooser" and r.done and "loaded" in r.text for r in reports)
    # a new run in the folder starts by removing the old one's files, the chooser included
    clear_run(out)
    assert not (out / CHOOSER_FILE).exists()


def test_resume_reads_only_a_sound_chooser_fitted_as_asked(tmp_path, caplog):
    """--resume keeps a chooser fitted on as many objects as asked; another count, or a
    damaged file (with a warning naming it), is fitted again."""
    tables = [(np.random.default_rng(i).normal(size=(4, len(FEATURES))), np.linspace(0.2, 0.5, 4)) for i in range(5)]
    EditChooser.fit(tables, meta={"objects_asked": 4}).save(tmp_path / CHOOSER_FILE)
    assert load_run_chooser(tmp_path, 4).meta["objects_asked"] == 4
    assert load_run_chooser(tmp_path, 200) is None and load_run_chooser(tmp_path / "none", 4) is None
    (tmp_path / CHOOSER_FILE).write_text("{")
    assert load_run_chooser(tmp_path, 4) is None
    assert "not an edit chooser file" in caplog.text and "fitting it again" in caplog.text
