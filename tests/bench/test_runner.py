"""The bench runner: outputs, resume after a kill, reruns from config.yaml, refusals,
late bad items, and Ray equal to serial."""

from __future__ import annotations

import pandas as pd
import pytest

from ppd.bench.config import BenchConfig
from ppd.bench.runner import run_bench
from ppd.bench.schema import COLUMNS
from ppd.bench.store import read_results

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(out, data, model, **kw):
    base = dict(data=data, models=[model], protocols=["clicks"], out=str(out), threads=1, bootstrap=50,
                options={"clicks": {"max_clicks": 3}})
    base.update(kw)
    return BenchConfig(**base)


def frame(out) -> pd.DataFrame:
    return read_results(out).sort_values(list(COLUMNS[:-1])).reset_index(drop=True)


def test_outputs_and_rows(tmp_path, folder_data, coco_file, tiny_model_spec):
    out = tmp_path / "run"
    outcome = run_bench(config(out, [f"mine={folder_data}", f"coco={coco_file}"], tiny_model_spec))
    df = read_results(out)
    assert list(df.columns) == list(COLUMNS)
    assert set(df.domain) == {"mine", "coco"} and set(df.model) == {"tiny"} and set(df.condition) == {"clean"}
    assert set(df.metric) == {"iou@1", "iou@2", "iou@3", "noc@85", "noc@90", "nof@85", "nof@90"}
    assert outcome.units == 5 and outcome.ran == 5 and not outcome.skipped
    # one value per object and metric; iou in [0, 1]; NoC in 1..3
    assert not df.duplicated(["domain", "image", "object", "metric"]).any()
    ious = df[df.metric.str.startswith("iou@")].value
    assert ious.between(0, 1).all()
    assert df[df.metric == "noc@90"].value.isin([1, 2, 3]).all()
    for name in ("config.yaml", "summary.json", "results.parquet"):
        assert (out / name).is_file()


def test_resume_after_kill_gives_identical_results(tmp_path, folder_data, tiny_model_spec):
    cfg_a = config(tmp_path / "a", [f"mine={folder_data}"], tiny_model_spec)
    run_bench(cfg_a)

    class Killed(Exception):
        pass

    def progress(total, done):
        count = [0]

        def tick(unit, result):
            count[0] += 1
            if count[0] == 2:
                raise Killed

        return tick

    cfg_b = config(tmp_path / "b", [f"mine={folder_data}"], tiny_model_spec)
    with pytest.raises(Killed):
        run_bench(cfg_b, progress)
    assert len(list((tmp_path / "b" / "units").rglob("*.json"))) == 2  # finished units were kept
    outcome = run_bench(cfg_b)
    assert outcome.ran == 1
    pd.testing.assert_frame_equal(frame(tmp_path / "a"), frame(tmp_path / "b"))


def test_rerun_from_config_and_refusal(tmp_path, folder_data, tiny_model_spec):
    out = tmp_path / "r"
    run_bench(config(out, [f"mine={folder_data}"], tiny_model_spec))
    again = BenchConfig.load(out / "config.yaml")
    again.out = str(tmp_path / "r2")
    run_bench(again)
    pd.testing.assert_frame_equal(frame(out), frame(tmp_path / "r2"))
    with pytest.raises(ValueError, match=r"other settings \(options differ\)"):
        run_bench(config(out, [f"mine={folder_data}"], tiny_model_spec, options={"clicks": {"max_clicks": 4}}))


def test_bad_item_found_late_is_skipped_and_counted(tmp_path, folder_data, tiny_model_spec):
    path = folder_data / "images" / "img2.png"
    path.write_bytes(path.read_bytes()[:120])  # the header reads, the pixels do not
    outcome = run_bench(config(tmp_path / "s", [f"mine={folder_data}"], tiny_model_spec))
    assert [s["image"] for s in outcome.skipped] == ["img2"]
    assert "img2" not in set(read_results(tmp_path / "s").image)
    assert outcome.units == 3


def test_unknown_protocol_and_option(tmp_path, folder_data, tiny_model_spec):
    with pytest.raises(ValueError, match="unknown protocol 'nope'; known protocols: clicks"):
        config(tmp_path, [f"mine={folder_data}"], tiny_model_spec, protocols=["nope"])
    with pytest.raises(ValueError, match="protocol clicks has no option 'clickz'"):
        config(tmp_path, [f"mine={folder_data}"], tiny_model_spec, options={"clicks": {"clickz": 3}})


def test_checkpoint_that_does_not_fit(tmp_path, folder_data):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save({"model": {"not_a_weight": torch.zeros(1)}}, bad)
    cfg = config(tmp_path / "x", [f"mine={folder_data}"], f"sam2-tiny-synthetic:{bad}")
    with pytest.raises(ValueError, match=r"--model sam2-tiny-synthetic: .*bad\.pt"):
        run_bench(cfg)
    assert not (tmp_path / "x").exists()  # nothing written before the check


def test_ray_equals_serial(tmp_path, folder_data, tiny_model_spec):
    pytest.importorskip("ray")
    run_bench(config(tmp_path / "serial", [f"mine={folder_data}"], tiny_model_spec))
    outcome = run_bench(config(tmp_path / "ray", [f"mine={folder_data}"], tiny_model_spec, ray=True, workers=2))
    assert outcome.ran == 3
    pd.testing.assert_frame_equal(frame(tmp_path / "serial"), frame(tmp_path / "ray"))


def test_summary_matches_results(tmp_path, folder_data, tiny_model_spec):
    import json

    out = tmp_path / "m"
    run_bench(config(out, [f"mine={folder_data}"], tiny_model_spec))
    df = read_results(out)
    summary = json.loads((out / "summary.json").read_text())
    cells = summary["protocols"]["clicks"]["mine"]["tiny/clicks/clean"]
    for metric in ("iou@1", "iou@3", "noc@85"):
        assert cells[metric]["value"] == pytest.approx(df[df.metric == metric].value.mean(), abs=1e-12)
        assert cells[metric]["ci_low"] <= cells[metric]["value"] <= cells[metric]["ci_high"]
    assert cells["nof@85"]["value"] == df[df.metric == "nof@85"].value.sum()
    assert summary["units"] == 3 and summary["skipped"] == []
    report = (out / "report.md").read_text()
    assert f"{100 * cells['iou@1']['value']:.1f}" in report
    for line in report.splitlines():
        if "](figures/" in line:
            assert (out / line.split("](")[1].split(")")[0]).is_file()


def test_killed_process_continues(tmp_path, tiny_model_spec):
    """A real kill (SIGKILL) mid-run, then the same command: the results equal an
    uninterrupted run's."""
    import subprocess
    import sys
    import time

    data = ["p=procedural:clutter"]
    argv = [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())", "bench", "--data", data[0], "--sample", "6", "--model", tiny_model_spec,
            "--protocol", "clicks", "--max-clicks", "8", "--threads", "1", "--bootstrap", "20"]
    ref = tmp_path / "ref"
    subprocess.run([*argv, "--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*argv, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("units/*/*/*.json"))) < 2:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = len(list(out.glob("units/*/*/*.json")))
    assert 2 <= done < 6, "the run was not killed midway"
    assert not (out / "results.parquet").exists()
    subprocess.run([*argv, "--out", str(out)], check=True, capture_output=True)
    pd.testing.assert_frame_equal(frame(ref), frame(out))


def test_models_face_the_same_random_prompts(tmp_path, folder_data, tiny_model_spec):
    """Two labels of one model measure identical values: each unit's random stream (coarse
    sets, random_drop, the uncertainty protocol's first click) depends on the image and the
    protocol, not on the model, so a comparison of models pairs like with like."""
    other = tiny_model_spec.replace("tiny=", "again=", 1)
    out = tmp_path / "run"
    run_bench(config(out, [f"mine={folder_data}"], tiny_model_spec, models=[tiny_model_spec, other],
                     protocols=["refine", "uncertainty"], options={"refine": {"baselines": ["no_refine", "random_drop"]}}))
    df = read_results(out)
    df = df[df.metric != "refine_ms"]  # a wall time
    keys = ["domain", "protocol", "method", "image", "object", "condition", "metric"]
    a = df[df.model == "tiny"].sort_values(keys).reset_index(drop=True)
    b = df[df.model == "again"].sort_values(keys).reset_index(drop=True)
    assert len(a) == len(b) > 0 and set(a.protocol) == {"refine", "uncertainty"}
    pd.testing.assert_frame_equal(a.drop(columns="model"), b.drop(columns="model"))


def test_a_run_saved_before_streams_reruns_as_it_ran(tmp_path, folder_data, tiny_model_spec):
    """A config.yaml without ``streams`` is a run whose streams included the model: its
    --config rerun keeps them; the same flags on its folder are refused, naming streams."""
    import yaml

    from ppd.bench.runner import check_out
    from ppd.bench.schema import Unit

    cfg = config(tmp_path / "old", [f"mine={folder_data}"], tiny_model_spec)
    cfg.save(tmp_path / "old")
    path = tmp_path / "old" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    del saved["streams"]
    path.write_text(yaml.safe_dump(saved))
    assert BenchConfig.load(path).streams == "model_image"
    with pytest.raises(ValueError, match=r"streams differ\).*--config"):
        check_out(cfg)
    with pytest.raises(ValueError, match="streams must be one of image, model_image"):
        config(tmp_path, [f"mine={folder_data}"], tiny_model_spec, streams="model")
    a, b = Unit("a", "d", 0, "x", "refine"), Unit("b", "d", 0, "x", "refine")
    assert a.seed(0).integers(2**62) == b.seed(0).integers(2**62)
    assert a.seed(0, per_model=True).integers(2**62) != b.seed(0, per_model=True).integers(2**62)


def test_oneshot_on_a_folder_per_class_with_its_pairs_figure(tmp_path, class_folders, tiny_model_spec):
    """Every image of a class folder is a target whose reference is another image of its
    class; the report's pairs figure redraws those references (the run's domains bound)."""
    out = tmp_path / "run"
    outcome = run_bench(config(out, [f"pets={class_folders}"], tiny_model_spec, protocols=["oneshot"],
                               options={"oneshot": {"baselines": ["greedy_score"]}}))
    df = read_results(out)
    assert outcome.units == 6 and not outcome.skipped
    assert sorted(set(df.image)) == ["cat/0", "cat/1", "cat/2", "dog/0", "dog/1", "dog/2"]
    assert {"fm", "fm+greedy_score", "fm_oracle", "persam", "gbmseg"} <= set(df.method)
    assert (out / "figures" / "oneshot_pairs.png").is_file()
