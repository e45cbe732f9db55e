"""Everyday mistakes on the command line: one line naming the input, exit code 2, no
traceback (the real entry point, in a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PPD = [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())"]


def ppd(*argv, cwd=None):
    return subprocess.run([*PPD, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("device, message", [
    ("tpu", "is not a device"),
    ("xla", "ppd runs on cpu or cuda"),
    ("banana", "is not a device"),
])
def test_bad_device_is_a_usage_error(device, message):
    res = ppd("segment", "--image", "x.png", "--points", "1,1,1", "--device", device, "--out", "o")
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_cuda_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = ppd("bench", "--data", "a=procedural:train", "--device", "cuda", "--out", "o")
    assert res.returncode == 2 and "torch sees no CUDA GPU" in res.stderr and "Traceback" not in res.stderr


def test_out_that_is_a_file(tmp_path):
    from PIL import Image
    import numpy as np

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "taken").write_text("a file")
    res = ppd("segment", "--image", str(tmp_path / "img.png"), "--points", "5,5,1", "--out", str(tmp_path / "taken"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("ppd segment: error:") and "taken" in res.stderr
    assert (tmp_path / "taken").read_text() == "a file"  # nothing lost


def test_config_that_is_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1, 2\nseed: {")
    res = ppd("train", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "not valid YAML" in res.stderr or str(bad) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_training_commands_refuse_bad_settings_in_one_line(tmp_path):
    res = ppd("train", "--device", "tpu", "--out", str(tmp_path / "t"))
    assert res.returncode == 2 and "unknown device 'tpu'" in res.stderr and "Traceback" not in res.stderr
    res = ppd("pretrain", "--steps", "-1", "--out", str(tmp_path / "p"))
    assert res.returncode == 2 and "steps must be >= 1, got -1" in res.stderr
    assert not (tmp_path / "p" / "model.pt").exists()
    res = ppd("pretrain", "--resume", "--out", str(tmp_path / "empty"))
    assert res.returncode == 2 and "nothing to continue" in res.stderr


def test_bad_refine_budget_names_the_flag(tmp_path):
    from PIL import Image
    import numpy as np

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    res = ppd("refine", "--image", str(tmp_path / "img.png"), "--points", "5,5,1", "--max-steps", "-1",
              "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "--max-steps" in res.stderr and "got -1" in res.stderr and not (tmp_path / "out").exists()


def test_defender_budget_is_checked_when_built(tmp_path):
    import pytest as _pytest

    from ppd.agents.defender import PromptDefender

    with _pytest.raises(ValueError, match=r"integer >= 1, or None when unknown; got -1"):
        PromptDefender(None, None, grid=16, max_steps=-1)


def test_coco_rle_of_another_size_is_one_line_before_any_work(tmp_path):
    # ppd train checks its --data the same way (ppd.bench.data.open_domain)
    import json

    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "images" / name)
    rle = mask_utils.encode(np.asfortranarray(np.ones((20, 30), np.uint8)))  # half the image's size
    square = [[5, 5, 25, 5, 25, 25, 5, 25]]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "area": 400.0, "iscrowd": 0, "segmentation": square},
            {"id": 2, "image_id": 2, "category_id": 1, "area": 600.0, "iscrowd": 1,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}]
    images = [{"id": i, "file_name": n, "height": 40, "width": 60} for i, n in ((1, "a.png"), (2, "b.png"))]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))
    out = tmp_path / "out"
    res = ppd("bench", "--data", f"c={tmp_path / 'ann.json'}", "--out", str(out), "--threads", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("ppd bench: error: --data c: ")
    assert "annotation 2 (image b.png) is an RLE of size [20, 30] but its image is listed as [40, 60]" in res.stderr
    assert not out.exists()


def test_bench_says_when_a_dataset_has_no_object_to_measure(tmp_path):
    import numpy as np
    from PIL import Image

    for sub in ("images", "masks"):
        (tmp_path / "empty" / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "empty" / "images" / "a.png")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "empty" / "masks" / "a.png")  # no object
    res = ppd("bench", "--data", f"e={tmp_path / 'empty'}", "--protocol", "clicks", "--out", str(tmp_path / "out"),
              "--threads", "1")
    assert res.returncode == 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "ppd bench: warning: no object was measured in --data e: every mask is empty, --min-area / --max-objects "
        "left no object, every image was skipped, or (oneshot) no reference could be drawn (see the warnings above)")
