"""``ppd bench`` on the command line: flags, --quick, --config, errors."""

from __future__ import annotations

import pytest

from ppd.bench.config import BenchConfig
from ppd.bench.protocols import protocol_names
from ppd.cli import build_parser, main
from ppd.cli.bench import build_config
from ppd.data.scenes import DOMAINS


def parse(*argv):
    return build_parser(["bench", *argv]).parse_args(["bench", *argv])


def test_protocol_options_are_flags():
    args = parse("--data", "a=procedural:train", "--max-clicks", "7", "--feed-logits", "--targets", "80", "95", "--out", "o")
    cfg = build_config(args)
    assert cfg.options["clicks"] == {"max_clicks": 7, "feed_logits": True, "targets": [80, 95]}
    assert cfg.protocols == protocol_names()  # default: every protocol
    assert cfg.models == ["bundled"]


def test_quick_preset():
    cfg = build_config(parse("--quick", "--data", "mine=some/folder"))
    assert cfg.data == [f"{d}=procedural:{d}" for d in DOMAINS] + ["mine=some/folder"]
    assert (cfg.sample, cfg.max_objects, cfg.out) == (6, 4, "bench_out")
    assert cfg.protocols == protocol_names()
    assert cfg.options["refine"]["defender"] == ["bundled"]  # each protocol's quick options
    own = build_config(parse("--quick", "--defender", "runs/mine"))
    assert own.options["refine"]["defender"] == ["runs/mine"]  # options given win


def test_config_file_then_flags(tmp_path):
    BenchConfig(data=["a=procedural:thin"], sample=5, out=str(tmp_path / "o"), protocols=["clicks"],
                options={"clicks": {"max_clicks": 4}}).save(tmp_path)
    cfg = build_config(parse("--config", str(tmp_path / "config.yaml"), "--sample", "3"))
    assert (cfg.sample, cfg.data, cfg.protocols) == (3, ["a=procedural:thin"], ["clicks"])
    assert cfg.options["clicks"]["max_clicks"] == 4


@pytest.mark.parametrize("argv, message", [
    (["--data", "x=/no/such/folder"], "/no/such/folder does not exist"),
    (["--data", "x=procedural:train", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["--data", "x=procedural:train", "--model", "sam2.1_hiera_t:/no/ckpt.pt"], "checkpoint /no/ckpt.pt not found"),
    (["--data", "x=procedural:train", "--data", "x=procedural:thin"], "share the --data name 'x'"),
    ([], "no data"),
    (["--data", "x=procedural:train", "--protocol", "refine", "--attacker", "/no/run"],
     "--attacker /no/run: run folder or model file not found: /no/run"),
    (["--data", "x=procedural:train", "--protocol", "breps", "--attacker", "/no/run"],
     "--attacker /no/run: run folder or model file not found: /no/run"),
])
def test_errors_exit_2_with_one_message(tmp_path, capsys, argv, message):
    if "--protocol" not in argv:
        argv = [*argv, "--protocol", "clicks"]
    assert main(["bench", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (tmp_path / "o").exists()


def test_unknown_protocol_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse("--protocol", "nope")
    assert "invalid choice: 'nope'" in capsys.readouterr().err
