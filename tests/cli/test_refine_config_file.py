"""``ppd refine --config FILE``: refine options from a YAML / JSON file, the flags given
overriding it (``--min-score-gain off`` included), and clear errors for bad files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import yaml

from ppd.agents.refine_config import DEFAULT_MIN_SCORE_GAIN, RefineConfig, refine_config_from_args
from ppd.cli import main
from ppd.cli.refine import add_arguments

BASE = ["--image", "a.png", "--points", "1,2,1"]


def _config(tmp_path, argv: list[str], file_values: dict | None = None, suffix: str = ".yaml") -> RefineConfig:
    """The RefineConfig ppd refine builds from ``argv`` and a file of ``file_values``."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    path = None
    if file_values is not None:
        path = tmp_path / f"refine{suffix}"
        path.write_text(json.dumps(file_values) if suffix == ".json" else yaml.safe_dump(file_values))
        argv = argv + ["--config", str(path)]
    args = p.parse_args(BASE + argv)
    return refine_config_from_args(args, args.config)


def test_min_score_gain_off_overrides_the_file(tmp_path):
    assert _config(tmp_path, ["--min-score-gain", "off"], {"min_score_gain": 0.02}).min_score_gain is None
    assert _config(tmp_path, [], {"min_score_gain": None}).min_score_gain is None  # null in the file, no flag
    assert _config(tmp_path, [], {"min_score_gain": 0.02}).min_score_gain == 0.02
    assert _config(tmp_path, ["--min-score-gain", "0.02"]).min_score_gain == 0.02  # a flag alone
    assert _config(tmp_path, ["--min-score-gain", "off"]).min_score_gain is None
    assert _config(tmp_path, []).min_score_gain == DEFAULT_MIN_SCORE_GAIN == -0.05
    assert _config(tmp_path, [], {}) == RefineConfig()


def test_flags_given_override_the_file_and_the_rest_stays(tmp_path):
    file_values = {"select": "last", "polish": True, "consensus": False, "max_steps": 4, "filter_threshold": 0.7}
    cfg = _config(tmp_path, ["--no-polish", "--max-steps", "2"], file_values)
    assert cfg == RefineConfig(select="last", polish=False, consensus=False, max_steps=2, filter_threshold=0.7)
    # a switch set back to its default on the command line still wins over the file
    assert _config(tmp_path, ["--consensus"], file_values).consensus is True
    assert _config(tmp_path, ["--select", "score"], file_values).select == "score"
    # JSON as well, and the file ppd refine saves beside its outputs reads back as it was
    assert _config(tmp_path, [], file_values, ".json") == _config(tmp_path, [], file_values)
    saved = RefineConfig(select="last", min_score_gain=None, use_filter=False, patience=None)
    saved.save(tmp_path / "refine_config.yaml")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(BASE + ["--config", str(tmp_path / "refine_config.yaml")])
    assert refine_config_from_args(args, args.config) == saved


def test_bad_config_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) in .*refine.yaml: selekt; known: .*select"):
        _config(tmp_path, [], {"selekt": "last"})
    with pytest.raises(ValueError, match=r"refine options of .*refine.yaml: min_score_gain must be"):
        _config(tmp_path, [], {"min_score_gain": 2})
    # YAML reads a bare `off` as false: the error says how to switch the guard off
    (tmp_path / "off.yaml").write_text("min_score_gain: off\n")
    with pytest.raises(ValueError, match=r"null in a YAML file\), got False"):
        RefineConfig.from_file(tmp_path / "off.yaml")
    # a file's use_filter: false with a filter flag: the conflict names the file and the flag's field
    with pytest.raises(ValueError, match=r"refine.yaml and the options given \(filter_action\): "
                                         r"filter_action set with use_filter=False"):
        _config(tmp_path, ["--filter-action", "relabel"], {"use_filter": False})
    (tmp_path / "broken.yaml").write_text("select: [last\n")
    with pytest.raises(ValueError, match="cannot parse config file .*broken.yaml"):
        RefineConfig.from_file(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- select\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        RefineConfig.from_file(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        RefineConfig.from_file(tmp_path / "missing.yaml")


def test_refine_command_reads_the_config_file(tmp_path, random_image, capsys):
    """End to end with the bundled defender: the options it ran with (refine_config.yaml)
    are the file's with the flags given on top; a bad file stops it before any output."""
    from ppd.cli.common import save_png

    save_png(random_image, tmp_path / "img.png")
    argv = ["refine", "--image", str(tmp_path / "img.png"), "--points", "10,10,1;50,40,1;100,80,0", "--device", "cpu"]
    (tmp_path / "opts.yaml").write_text(yaml.safe_dump({"select": "last", "min_score_gain": 0.02, "max_steps": 2}))
    out = tmp_path / "out"
    assert main(argv + ["--config", str(tmp_path / "opts.yaml"), "--min-score-gain", "off", "--out", str(out)]) == 0
    ran = RefineConfig.from_file(out / "refine_config.yaml")
    assert ran == RefineConfig(select="last", min_score_gain=None, max_steps=2)
    res = json.loads((out / "refined.json").read_text())
    assert res["steps"] <= 2 and not any("score guard" in t for t in res["trace"])
    assert np.array(res["point_coords"]).shape[1] == 2
    (tmp_path / "bad.yaml").write_text("selekt: last\n")
    assert main(argv + ["--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "bad")]) == 2
    assert "ppd refine: error: unknown field(s) in" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
