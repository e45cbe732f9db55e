"""``ppd.agents.run_config`` and ``ppd.agents.run_files``: a run's settings read through
TrainConfig (RunConfig), the fallback for older config layouts, and PromptDefender
loading old and bare run folders with the values earlier loaders gave."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from ppd.agents.defender import PromptDefender
from ppd.agents.run_config import RunConfig, read_run_config, role_max_steps
from ppd.agents.train_config import TrainConfig
from ppd.bench import run_max_ideal_points
from ppd.models import BUNDLED_NAME

BUNDLED_RUN = Path(__file__).resolve().parents[2] / "ppd" / "assets" / "defender"
BUNDLED_RAW = yaml.safe_load((BUNDLED_RUN / "config.yaml").read_text())


def _values(rc: RunConfig) -> tuple:
    """What loading reads: (segmenter, grid, node_uncertainty, k_physical, k_semantic,
    defender budget, attacker budget, max_ideal_points, role)."""
    return (rc.segmenter_name, rc.saved_value("grid"), rc.saved_value("node_uncertainty"),
            rc.saved_value("k_physical"), rc.saved_value("k_semantic"), rc.max_steps("defender"),
            rc.max_steps("attacker"), rc.max_ideal_points, rc.role)


# Each layout with the values earlier loaders (a key search over nested sections) gave.
LAYOUTS = {
    "ppd train's flat TrainConfig (bundled run)": (BUNDLED_RAW, (BUNDLED_NAME, 16, False, 8, 8, 12, 4, 6, None)),
    "nested sections, model for segmenter": (
        {"model": "sam2-x", "env": {"grid": 16, "k_physical": 4, "k_semantic": 5, "max_ideal_points": 3},
         "defender": {"max_steps": 7}, "attacker": {"max_steps": 2}},
        ("sam2-x", 16, None, 4, 5, 7, 2, 3, None)),
    "a max_steps mapping per role": (
        {"grid": 16, "max_steps": {"defender": 5, "attacker": 3}}, (BUNDLED_NAME, 16, None, None, None, 5, 3, 6, None)),
    "max_steps_ROLE keys and a role": (
        {"max_steps_defender": 9, "role": "defender", "segmenter": "sam2-y"},
        ("sam2-y", None, None, None, None, 9, None, 6, "defender")),
    "TrainConfig fields inside a section": (
        {"train": {"defender_max_steps": 6, "node_uncertainty": False, "checkpoint": "ck.pt"}},
        (BUNDLED_NAME, None, False, None, None, 6, None, 6, None)),
    "a top-level segmenter of the wrong type": (
        {"segmenter": None, "model": "sam2-z"}, ("sam2-z", None, None, None, None, None, None, 6, None)),
    "a value TrainConfig rejects (rounds 0)": (
        {"rounds": 0, "grid": 16, "defender_max_steps": 6}, (BUNDLED_NAME, 16, None, None, None, 6, None, 6, None)),
    "a zero budget (read as none saved)": (
        {"defender_max_steps": 0, "attacker_max_steps": 0}, (BUNDLED_NAME, None, None, None, None, None, None, 6, None)),
    "a flat config missing most fields": ({"grid": 16}, (BUNDLED_NAME, 16, None, None, None, None, None, 6, None)),
    "an empty config": ({}, (BUNDLED_NAME, None, None, None, None, None, None, 6, None)),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_read_as_before(name):
    raw, expected = LAYOUTS[name]
    rc = RunConfig.from_mapping(raw, name)
    assert _values(rc) == expected
    assert dict(rc.raw) == raw  # PromptDefender.config: the mapping as read
    assert (rc.train is None) == (not raw)


def test_flat_config_is_read_by_train_config():
    """ppd train's config.yaml is read by TrainConfig itself: every field, typed, and
    the fields it saved; a legacy one holds only the loader's settings."""
    rc = RunConfig.read(BUNDLED_RUN)
    assert rc.train == TrainConfig.from_run(BUNDLED_RUN)
    assert rc.saved == frozenset(BUNDLED_RAW) and "threads" not in rc.saved  # written before threads existed
    assert rc.saved_value("threads") is None and rc.train.threads == 0
    assert rc.train.defender_steps == BUNDLED_RAW["defender_steps"] == 7500
    legacy = RunConfig.from_mapping(LAYOUTS["nested sections, model for segmenter"][0])
    assert legacy.saved == {"segmenter", "grid", "k_physical", "k_semantic", "max_ideal_points",
                            "defender_max_steps", "attacker_max_steps"}
    assert legacy.train.k_physical == 4 and legacy.train.rounds == TrainConfig().rounds


def test_flat_config_budget_is_never_the_training_length():
    """In a TrainConfig file, defender_steps is the defender's training length: a file
    without defender_max_steps has no saved budget (not 7500 env steps)."""
    raw = {k: v for k, v in BUNDLED_RAW.items() if k not in ("defender_max_steps", "attacker_max_steps")}
    rc = RunConfig.from_mapping(raw)
    assert rc.max_steps("defender") is None and rc.max_steps("attacker") is None
    assert rc.train.defender_steps == 7500


def test_unknown_key_of_a_newer_version_is_left_out(caplog):
    with caplog.at_level(logging.WARNING, logger="ppd.config"):
        rc = RunConfig.from_mapping({"grid": 16, "defender_max_steps": 5, "future_knob": 3}, "cfg.yaml")
    assert rc.max_steps("defender") == 5 and rc.saved_value("grid") == 16 and "future_knob" not in rc.saved
    assert "future_knob" in caplog.text and "cfg.yaml" in caplog.text


def test_conversions_and_helpers():
    train = TrainConfig(max_ideal_points=4, attacker_max_steps=3)
    for cfg in (train, RunConfig.of(train), train.to_dict()):
        assert run_max_ideal_points(cfg) == 4 and role_max_steps(cfg, "attacker") == 3
        assert RunConfig.of(cfg).max_steps("defender") == train.defender_max_steps == 12
    assert run_max_ideal_points(None) == 6 and role_max_steps(None, "defender") is None
    rc = RunConfig.of(train)
    assert RunConfig.of(rc) is rc


def test_bad_settings_name_the_run(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"env": {"grid": -1}}))
    with pytest.raises(ValueError, match=r"corrupt run folder .*grid=-1"):
        RunConfig.read(tmp_path)
    (tmp_path / "config.yaml").write_text("grid: [16\n")
    with pytest.raises(ValueError, match="cannot parse config.yaml"):
        RunConfig.read(tmp_path)
    (tmp_path / "config.yaml").unlink()
    assert RunConfig.read(tmp_path) == RunConfig() and read_run_config(tmp_path) == {}


# ----------------------------------------------------------------------------- loading
def _run_folder(tmp_path: Path, name: str, config: dict | None) -> Path:
    """The bundled defender.zip (16 x 16 nodes, no label filter) with ``config``."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(BUNDLED_RUN / "defender.zip", folder / "defender.zip")
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_defender_loads_old_and_bare_runs(tmp_path, tiny_segmenter):
    kw = dict(segmenter=tiny_segmenter, device="cpu")
    bundled = PromptDefender.load(None, **kw)
    assert bundled.train_config == TrainConfig.from_run(BUNDLED_RUN) and bundled.config == BUNDLED_RAW
    assert bundled.train_max_steps == 12 and bundled.world.k_physical == 8

    bare = PromptDefender.load(_run_folder(tmp_path, "bare", None), **kw)  # a defender.zip with no config
    assert bare.train_config is None and bare.config == {} and bare.train_max_steps is None
    assert bare.default_steps(3) == 12 and bare.default_steps(20) == 20  # max(K, 12): as trained, unknown
    assert (bare.world.k_physical, bare.world.k_semantic) == (8, 8)

    nested = {"env": {"grid": 16, "k_physical": 4, "k_semantic": 6}, "defender": {"max_steps": 7}}
    old = PromptDefender.load(_run_folder(tmp_path, "nested", nested), **kw)
    assert old.train_max_steps == 7 and old.default_steps(20) == 7
    assert (old.world.k_physical, old.world.k_semantic) == (4, 6)
    assert old.config == nested and old.train_config.k_physical == 4 and "rounds" not in old.run_config.saved

    with pytest.raises(ValueError, match="config grid 8 but the model has 256 nodes"):
        PromptDefender.load(_run_folder(tmp_path, "grid8", {"env": {"grid": 8}}), **kw)
    with pytest.raises(ValueError, match="config node_uncertainty=True"):
        PromptDefender.load(_run_folder(tmp_path, "unc", {"train": {"node_uncertainty": True}}), **kw)
    with pytest.raises(ValueError, match="corrupt run folder"):
        PromptDefender.load(_run_folder(tmp_path, "neg", {"env": {"grid": -1}}), **kw)
