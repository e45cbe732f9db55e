"""``python -m ppd.bench.generators``: the named prompt generators, the ``ppd bench`` run the
command stands for, and its table read back from that run's results."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from ppd.bench.generators import (
    GENERATORS, bench_arguments, format_table, gain_intervals, generator_prompts, generator_table, main, mean_gains,
    parser,
)
from ppd.bench.store import read_results
from ppd.cli import bench as bench_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bench_config(argv: list[str]):
    bp = argparse.ArgumentParser()
    bench_cli.add_arguments(bp)
    return bench_cli.build_config(bp.parse_args(bench_arguments(parser().parse_args(argv))))


def test_generators_draw_their_kind_of_prompts():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    clean = generator_prompts("clean", mask, np.random.default_rng(0))
    inside = mask[clean.point_coords[:, 1].astype(int), clean.point_coords[:, 0].astype(int)]
    np.testing.assert_array_equal(inside, clean.point_labels == 1)  # every label right
    assert len(clean.point_labels) == 8
    assert len(generator_prompts("many", mask, np.random.default_rng(0)).point_labels) == 16
    assert len(generator_prompts("few", mask, np.random.default_rng(0)).point_labels) == 4
    ideal = generator_prompts("ideal", mask, np.random.default_rng(0), max_ideal=2)
    assert (ideal.point_labels == 1).sum() <= 2 and (ideal.point_labels == 0).sum() <= 2
    assert set(GENERATORS) >= {"default", "clean", "ideal"}
    with pytest.raises(ValueError, match="unknown generator 'gaussian'"):
        generator_prompts("gaussian", mask, np.random.default_rng(0))


def test_options_map_to_the_equivalent_bench_run():
    cfg = bench_config(["--domains", "train", "alt", "--scenes", "7", "--generators", "clean", "flips",
                        "--select", "last", "--min-score-gain", "off", "--no-keep-consistent", "--without-filter",
                        "--threads", "1", "--out", "somewhere", "--seed", "3", "--max-objects", "2"])
    assert cfg.protocols == ["refine"] and cfg.data == ["train=procedural:train", "alt=procedural:alt"]
    assert (cfg.sample, cfg.seed, cfg.max_objects, cfg.threads, cfg.out, cfg.models) == (7, 3, 2, 1, "somewhere", ["bundled"])
    refine = cfg.protocol_configs()["refine"]
    assert refine.defender == ["bundled"] and refine.baselines == ["no_refine", "greedy_score"]
    assert refine.generators == ["clean", "flips"] and refine.without_filter
    assert refine.defender_options == ["select=last", "keep_consistent=false", "min_score_gain=null"]
    # the defaults: every generator, the defender's own options, ppd bench's defaults elsewhere
    cfg = bench_config([])
    assert cfg.data == ["train=procedural:train", "texture=procedural:texture"] and cfg.sample == 10
    refine = cfg.protocol_configs()["refine"]
    assert refine.generators == list(GENERATORS) and refine.defender_options == [] and not refine.without_filter
    assert (cfg.seed, cfg.max_objects, cfg.threads, cfg.out) == (0, None, 0, "bench_out/generators")


def _rows(domain, condition, method, values):
    return [dict(model="m", domain=domain, protocol="refine", method=method, image=str(i), object=0,
                 condition=condition, metric=metric, value=v if metric == "iou" else 1.0)
            for i, v in enumerate(values) for metric in ("iou", "kept")]


def test_table_is_the_mean_iou_per_domain_generator_and_refiner():
    rows = (_rows("train", "clean", "no_refine", [0.8, 0.6]) + _rows("train", "clean", "ppd:bundled", [0.9, 0.9])
            + _rows("train", "clean", "greedy_score", [0.7, 0.7]) + _rows("train", "flips", "no_refine", [0.2, 0.4])
            + _rows("train", "flips", "ppd:bundled", [0.6, 0.8]) + _rows("train", "flips", "greedy_score", [0.5, 0.3])
            + _rows("alt", "clean", "no_refine", [0.5]))  # another domain: not asked for
    table = generator_table(pd.DataFrame(rows), "bundled", ["train"], ["clean", "flips"])
    assert table == {"train": {"clean": pytest.approx({"input": 0.7, "ppd": 0.9, "greedy_score": 0.7}),
                               "flips": pytest.approx({"input": 0.3, "ppd": 0.7, "greedy_score": 0.4})}}
    assert mean_gains(table["train"]) == pytest.approx({"ppd": 0.3, "greedy_score": 0.05})
    text = format_table(table).splitlines()
    assert text[0].split() == ["train", "input", "ppd", "greedy_score", "ppd", "-", "input"]
    assert text[1].split() == ["clean", "0.700", "0.900", "0.700", "+0.200"]
    assert text[3].split() == ["mean", "gain", "+0.300", "+0.050"]
    # per object the gain averaged over the generators (0.25 and 0.35 for ppd, 0.1 and 0.0 for
    # greedy), its mean and a bootstrap interval within the objects' range; the difference paired
    gains = gain_intervals(pd.DataFrame(rows), "bundled", "train", ["clean", "flips"], n_boot=200)
    assert list(gains) == ["ppd", "greedy_score", "ppd - greedy_score"]
    for name, (lo_obj, hi_obj, mean) in {"ppd": (0.25, 0.35, 0.3), "greedy_score": (0.0, 0.1, 0.05),
                                         "ppd - greedy_score": (0.15, 0.35, 0.25)}.items():
        value, low, high = gains[name]
        assert value == pytest.approx(mean) and lo_obj - 1e-9 <= low <= value <= high <= hi_obj + 1e-9, name
    assert low < high  # two different objects: a real interval
    assert "ppd - greedy_score +0.250 [" in format_table(table, {"train": gains})
    # a lone default generator is the refine protocol's condition "clean"
    alone = generator_table(pd.DataFrame(_rows("train", "clean", "no_refine", [0.5])), "bundled", ["train"], ["default"])
    assert alone == {"train": {"default": {"input": 0.5}}}
    with pytest.raises(ValueError, match="no refine results for domain 'alt', generator 'flips'"):
        generator_table(pd.DataFrame(rows), "bundled", ["alt"], ["flips"])


def test_command_prints_the_table_of_its_bench_run(tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["--domains", "train", "--scenes", "1", "--max-objects", "1", "--generators", "clean", "few",
            "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == ("ppd bench --protocol refine --data train=procedural:train --sample 1 "
                                       f"--max-objects 1 --defender bundled --baselines no_refine greedy_score "
                                       f"--generators clean few --threads 1 --out {out}")
    df = read_results(out)
    iou = df[df.metric == "iou"]
    assert set(iou.method) == {"no_refine", "greedy_score", "ppd:bundled"} and set(iou.condition) == {"clean", "few"}
    want = iou[(iou.condition == "few") & (iou.method == "ppd:bundled")].value.mean()
    few = next(line for line in printed.splitlines() if line.split()[:1] == ["few"])
    assert float(few.split()[2]) == pytest.approx(want, abs=5e-4)
    gains = next(line for line in printed.splitlines() if "95% interval" in line)
    ppd_gain = (iou[iou.method == "ppd:bundled"].value.mean() - iou[iou.method == "no_refine"].value.mean())
    assert f"ppd {ppd_gain:+.3f} [" in gains and "ppd - greedy_score" in gains
    # the same command on the finished folder runs nothing and prints the same table
    units = sorted(p.stat().st_mtime_ns for p in (out / "units").rglob("*.json"))
    assert main(argv) == 0
    assert capsys.readouterr().out == printed
    assert sorted(p.stat().st_mtime_ns for p in (out / "units").rglob("*.json")) == units
    # other settings on the same folder: refused with the reason, nothing run
    with pytest.raises(SystemExit):
        main(argv[:-2] + ["--no-keep-consistent", "--out", str(out)])
    assert "holds a benchmark with other settings (options differ)" in capsys.readouterr().err


def test_bad_options_are_usage_errors(capsys):
    for argv, message in ((["--generators", "gaussian"], "unknown generators ['gaussian']"),
                          (["--domains", "moon"], "unknown domains ['moon']"),
                          (["--scenes", "0"], "--scenes must be >= 1")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
