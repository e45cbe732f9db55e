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
