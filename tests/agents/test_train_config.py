"""``ppd.agents.train_config``: TrainConfig's checks, threads, and reading run folders
back (:meth:`TrainConfig.from_run`), old and new ones."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ppd.agents.train_config import ABSENT_MEANS, BUNDLED_SEGMENTER, RUN_CONFIG_FILES, TrainConfig

BUNDLED_RUN = Path(__file__).resolve().parents[2] / "ppd" / "assets" / "defender"


def test_config_and_train_help_load_no_torch_or_sb3():
    """Importing the config, and ``ppd train --help`` (built from its fields), load
    neither torch, Stable-Baselines3 nor torch-geometric."""
    code = (
        "import contextlib, io, sys\n"
        "from ppd.agents.train_config import TrainConfig\n"
        "from ppd.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "    try:\n"
        "        main(['train', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert '--threads' in text.getvalue() and '--filter-scenes' in text.getvalue()\n"
        "heavy = [m for m in ('torch', 'stable_baselines3', 'torch_geometric') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_bundled_name_spelled_as_the_models_module():
    from ppd.models import BUNDLED_NAME

    assert BUNDLED_SEGMENTER == BUNDLED_NAME == TrainConfig().segmenter


def test_from_run_reads_an_old_format_run(tmp_path):
    """The bundled defender's config.yaml was written before precision, threads,
    coarse_noise and the filter_* fields existed: every key it has is read, the rest take
    their defaults."""
    raw = yaml.safe_load((BUNDLED_RUN / "config.yaml").read_text())
    missing = {f.name for f in dataclasses.fields(TrainConfig)} - set(raw)
    assert {"precision", "threads", "coarse_noise", "filter_scenes", "filter_relabel_gates"} <= missing
    for folder in (BUNDLED_RUN, BUNDLED_RUN / "config.yaml"):
        cfg = TrainConfig.from_run(folder)
        got = cfg.to_dict()
        assert {k: got[k] for k in raw} == raw  # every saved value, as saved (label_aux 0.3, grid 16, ...)
        defaults = TrainConfig().to_dict()  # or, where the field changed training, what the run did
        assert {k: got[k] for k in missing} == {k: ABSENT_MEANS.get(k, defaults[k]) for k in missing}
    assert cfg.fm_starts == 0.0 and "fm" not in cfg.defender_start_mix
    assert cfg.label_aux == 0.3 and cfg.grid == 16 and cfg.threads == 0 and cfg.resolved_q_prior == "probe"
    # a run folder written by this version reads back as the configuration that wrote it
    new = dataclasses.replace(cfg, threads=2, filter_thresholds="0.6", coarse_kwargs={"n_points": 5})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(new.to_dict(), sort_keys=False))
    assert TrainConfig.from_run(tmp_path) == new


def test_from_run_ignores_unknown_keys_with_a_warning(tmp_path, caplog):
    data = yaml.safe_load((BUNDLED_RUN / "config.yaml").read_text())
    data.update(some_future_setting=3, rounds=5)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.WARNING):
        cfg = TrainConfig.from_run(tmp_path)
    assert cfg.rounds == 5 and not hasattr(cfg, "some_future_setting")
    assert "some_future_setting" in caplog.text and "ignoring" in caplog.text
    # a file the user writes (--config) still rejects it: there it is a typo
    with pytest.raises(ValueError, match="unknown field.*some_future_setting"):
        TrainConfig.from_dict(data)


def test_from_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run configuration"):
        TrainConfig.from_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"rounds": 3}))
    assert TrainConfig.from_run(tmp_path).rounds == 3  # the other names read_run_config knows
    assert RUN_CONFIG_FILES[0] == "config.yaml"
    (tmp_path / "config.yaml").write_text("rounds: [1\n")  # config.yaml comes first, and is corrupt
    with pytest.raises(ValueError, match="cannot parse"):
        TrainConfig.from_run(tmp_path)
    (tmp_path / "config.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        TrainConfig.from_run(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"rounds": 0}))
    with pytest.raises(ValueError, match="rounds=0"):  # the dataclass's checks apply
        TrainConfig.from_run(tmp_path)


def test_threads_field_checks_and_resume(tmp_path):
    """threads is saved with a run; an old config without it loads (0: torch's default),
    and --resume may set another count (flags override the saved config)."""
    from ppd.cli import build_parser
    from ppd.cli.train import config_for

    assert TrainConfig(threads=2).threads == 2
    with pytest.raises(ValueError, match="threads=-1"):
        TrainConfig(threads=-1)
    shutil.copy(BUNDLED_RUN / "config.yaml", tmp_path / "config.yaml")  # no threads key
    (tmp_path / "state.json").write_text(json.dumps({"round": 1}))
    for argv, threads in ((["--resume"], 0), (["--resume", "--threads", "2"], 2)):
        args = build_parser(["train"]).parse_args(["train", "--out", str(tmp_path), *argv])
        cfg, done = config_for(args)
        assert cfg.threads == threads and done == 1 and cfg.label_aux == 0.3  # the rest from the run's file
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**TrainConfig.from_run(tmp_path).to_dict(), "threads": 4}))
    args = build_parser(["train"]).parse_args(["train", "--out", str(tmp_path), "--resume", "--threads", "1"])
    assert config_for(args)[0].threads == 1


def test_choices_follow_the_modules_that_own_them():
    from ppd.agents.graph_qnet import NODE_FEATURES, Q_PRIORS
    from ppd.agents.label_filter import FILTER_ACTIONS
    from ppd.segmenter import PRECISIONS

    for v in NODE_FEATURES:
        assert TrainConfig(node_features=v).node_features == v
    for v in (*Q_PRIORS, "auto"):
        assert TrainConfig(q_prior=v, probe=True).q_prior == v
    for v in PRECISIONS:
        assert TrainConfig(precision=v).precision == v
    assert TrainConfig(filter_actions=",".join(FILTER_ACTIONS)).filter_action_list == FILTER_ACTIONS
    for bad in (dict(node_features="pixels"), dict(q_prior="oracle"), dict(precision="fp16"), dict(stop_q="one"),
                dict(node_norm="batch"), dict(coarse_noise="loud"), dict(start_mix={"clean": 1.0})):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)
