"""``python -m ppd.bench.defense``: the ``ppd bench`` run it stands for, and its table of
attacked, defended and coarse columns read back from that run's results."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml
from stable_baselines3.common.vec_env import DummyVecEnv

from ppd.agents.dqn import make_dqn
from ppd.agents.train_config import TrainConfig
from ppd.bench.defense import COLUMNS, bench_arguments, defense_table, format_table, main, parser
from ppd.bench.store import read_results
from ppd.cli import bench as bench_cli
from ppd.data.scenes import ProceduralScenes
from ppd.envs.point_prompt_env import PointPromptEnv
from ppd.envs.world import PromptWorld
from ppd.models import BUNDLED_NAME

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bench_config(argv: list[str], attacker: str | None = None):
    args = parser().parse_args(argv)
    args.attacker = attacker
    bp = argparse.ArgumentParser()
    bench_cli.add_arguments(bp)
    return bench_cli.build_config(bp.parse_args(bench_arguments(args)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_segmenter, tiny_checkpoint):
    """A run folder with random-weight defender.zip and attacker.zip on the tiny model."""
    folder = tmp_path_factory.mktemp("defense") / "tinyrun"
    folder.mkdir()
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 1, seed=0))
    for role in ("defender", "attacker"):
        env = DummyVecEnv([lambda: PointPromptEnv(role, world=world)])
        make_dqn(env, role, relabel=True, hidden_dim=16, n_layers=1, seed=0, device="cpu",
                 buffer_size=64).save(folder / f"{role}.zip")
    cfg = TrainConfig(segmenter=BUNDLED_NAME, checkpoint=tiny_checkpoint, grid=16, attacker_max_steps=3,
                      defender_max_steps=4)
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return folder


def test_options_map_to_the_equivalent_bench_run():
    cfg = bench_config(["--domains", "train", "alt", "--scenes", "7", "--select", "last", "--no-keep-consistent",
                        "--threads", "1", "--out", "somewhere", "--seed", "3", "--max-objects", "2"], attacker="att")
    assert cfg.protocols == ["refine"] and cfg.data == ["train=procedural:train", "alt=procedural:alt"]
    assert (cfg.sample, cfg.seed, cfg.max_objects, cfg.threads, cfg.out, cfg.models) == (7, 3, 2, 1, "somewhere", ["bundled"])
    refine = cfg.protocol_configs()["refine"]
    assert refine.defender == ["bundled"] and refine.attacker == "att" and refine.without_filter
    assert refine.baselines == ["no_refine", "random_drop", "greedy_score", "consistency", "mask_consensus"]
    assert refine.defender_options == ["select=last", "keep_consistent=false"]
    # the defaults: every procedural domain, 20 scenes, no attacker, the defender's own options
    cfg = bench_config([])
    assert len(cfg.data) == 6 and cfg.sample == 20 and cfg.out == "bench_out/defense"
    refine = cfg.protocol_configs()["refine"]
    assert refine.attacker == "" and refine.defender_options == []
    assert "patience=2" in bench_config(["--patience", "2"]).protocol_configs()["refine"].defender_options


def _rows(condition, method, values, metric="iou"):
    return [dict(model="m", domain="train", protocol="refine", method=method, image=str(i), object=0,
                 condition=condition, metric=metric, value=v) for i, v in enumerate(values)]


def test_table_reads_each_column_from_its_condition_and_method():
    rows = (_rows("dqn_attacker", "ideal", [0.9, 0.7]) + _rows("dqn_attacker", "no_refine", [0.3, 0.5])
            + _rows("dqn_attacker", "ppd:bundled", [0.8, 0.6]) + _rows("dqn_attacker", "attacked_oracle", [0.9, 0.9])
            + _rows("clean", "no_refine", [0.5, 0.6]) + _rows("clean", "ppd:bundled", [0.7, 0.8])
            + _rows("clean", "greedy_score", [0.6, 0.6]) + _rows("clean", "ppd:bundled", [10.0, 30.0, 50.0], "refine_ms"))
    table = defense_table(pd.DataFrame(rows), "bundled", ["train"])["train"]
    assert table["ideal"] == pytest.approx(0.8) and table["attacked"] == pytest.approx(0.4)
    assert table["defended"] == pytest.approx(0.7) and table["attacked+oracle"] == pytest.approx(0.9)
    assert table["coarse"] == pytest.approx(0.55) and table["coarse+ppd"] == pytest.approx(0.75)
    assert table["greedy_score"] == pytest.approx(0.6) and table["recovery"] == pytest.approx(0.7 / 0.8)
    assert table["refine_ms"] == 30.0  # the median
    assert table["defended[no filter]"] is None and table["mask_consensus"] is None  # not measured
    text = format_table({"train": table}).splitlines()
    assert text[0].split() == ["domain", "ideal", "attacked", "defended", "attacked+oracle", "recovery"]
    assert text[1].split() == ["train", "0.800", "0.400", "0.700", "0.900", "0.875"]
    assert text[2].split() == ["domain", "coarse", "coarse+ppd", "greedy_score", "refine_ms"]
    assert text[3].split() == ["train", "0.550", "0.750", "0.600", "30.0"]
    # without an attacker the first block is left out
    clean_only = defense_table(pd.DataFrame([r for r in rows if r["condition"] == "clean"]), "bundled", ["train"])
    assert clean_only["train"]["recovery"] is None and format_table(clean_only).split()[1] == "coarse"
    with pytest.raises(ValueError, match="no refine results for domain 'alt'"):
        defense_table(pd.DataFrame(rows), "bundled", ["alt"])
    assert set(COLUMNS) >= {"ideal", "attacked", "defended", "coarse", "coarse+ppd"}


def test_command_attacks_with_the_runs_own_attacker_and_prints_its_table(run_dir, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "def"
    argv = ["--run", str(run_dir), "--model", f"bundled:{tiny_checkpoint}", "--domains", "train", "--scenes", "1",
            "--max-objects", "2", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == (f"ppd bench --protocol refine --data train=procedural:train --model bundled:{tiny_checkpoint} "
                        f"--sample 1 --max-objects 2 --defender {run_dir} --baselines no_refine random_drop "
                        f"greedy_score consistency mask_consensus --attacker {run_dir} --without-filter --threads 1 "
                        f"--out {out}")
    df = read_results(out)
    iou = df[df.metric == "iou"]
    assert set(iou.condition) == {"clean", "dqn_attacker"}
    # each printed cell is the mean of its rows
    header, train = next((lines[i].split(), lines[i + 1].split()) for i in range(len(lines)) if "attacked" in lines[i])
    for column, method in (("ideal", "ideal"), ("attacked", "no_refine"), ("defended", "ppd:tinyrun"),
                           ("attacked+oracle", "attacked_oracle")):
        want = iou[(iou.condition == "dqn_attacker") & (iou.method == method)].value.mean()
        assert float(train[header.index(column)]) == pytest.approx(want, abs=5e-4), column
    header, train = next((lines[i].split(), lines[i + 1].split()) for i in range(len(lines)) if "coarse" in lines[i])
    want = iou[(iou.condition == "clean") & (iou.method == "no_refine")].value.mean()
    assert float(train[header.index("coarse")]) == pytest.approx(want, abs=5e-4)
    assert f"attacker: {run_dir}" in printed and np.isfinite(float(train[header.index("refine_ms")]))
    # the same command on the finished folder runs nothing and prints the same table
    assert main(argv) == 0
    assert capsys.readouterr().out == printed


def test_bad_options_are_usage_errors(run_dir, tmp_path, capsys):
    for argv, message in ((["--domains", "moon"], "unknown domains ['moon']"),
                          (["--scenes", "0"], "--scenes must be >= 1"),
                          (["--patience", "2", "--select", "last"], "--patience must be >= 1 and goes with --select score"),
                          (["--run", str(tmp_path / "none")], "no such run folder"),
                          (["--attacker", str(tmp_path / "none"), "--out", str(tmp_path / "o")], "--attacker")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err, argv
