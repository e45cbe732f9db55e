"""ppd.config: dataclass fields become documented CLI flags."""

import argparse
import dataclasses

from ppd.config import add_dataclass_args


@dataclasses.dataclass
class _Cfg:
    keep: float = 0.5
    """keep 90% of it"""
    name: str = "x"
    """a name"""


def test_field_docstrings_with_percent_signs_render_in_help():
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, _Cfg)
    text = parser.format_help()
    assert "keep 90% of it (default: 0.5)" in " ".join(text.split())
    args = parser.parse_args(["--keep", "0.25"])
    assert args.keep == 0.25 and args.name is None


def test_config_files_and_unknown_keys(tmp_path, caplog):
    import logging

    import pytest

    from ppd.config import build_config, config_from_dict, load_config_file

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, _Cfg)
    good = tmp_path / "c.yaml"
    good.write_text("keep: 0.75\n")
    assert build_config(_Cfg, parser.parse_args(["--name", "y"]), str(good)) == _Cfg(keep=0.75, name="y")
    (tmp_path / "typo.yaml").write_text("kep: 0.75\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) in .*typo.yaml: kep; known: keep, name"):
        build_config(_Cfg, parser.parse_args([]), str(tmp_path / "typo.yaml"))
    (tmp_path / "bad.yaml").write_text("keep: [0.75\n")
    with pytest.raises(ValueError, match="cannot parse config file"):
        load_config_file(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError):
        load_config_file(tmp_path / "none.yaml")
    with caplog.at_level(logging.WARNING, logger="ppd.config"):
        assert config_from_dict(_Cfg, {"keep": 0.1, "newer": 1}, "run", unknown="ignore") == _Cfg(keep=0.1)
    assert "run: ignoring setting(s) that _Cfg does not have: newer" in caplog.text
