"""The ``ppd`` command line: light top-level help, shared flags on every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ppd.cli import COMMANDS, build_parser, main


def test_top_level_help_imports_no_torch_or_sb3():
    code = (
        "import sys, contextlib, io\n"
        "from ppd.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'refine' in out.getvalue() and 'train-ruac' in out.getvalue(), out.getvalue()\n"
        "heavy = sorted(m for m in ('torch', 'stable_baselines3', 'sam2') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


def test_precisions_spelled_as_the_segmenter():
    from ppd.cli.common import PRECISIONS
    from ppd.segmenter import PRECISIONS as segmenter_precisions

    assert PRECISIONS == segmenter_precisions


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_threads_and_out(command):
    p = build_parser([command])
    sub = next(a for a in p._actions if a.dest == "command").choices[command]
    dests = {a.dest for a in sub._actions}
    assert {"threads", "out"} <= dests


def test_negative_threads_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--threads", "-1"])
    assert exc.value.code == 2
    assert "--threads must be >= 0" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
