"""``ppd refine --reference IMG --reference-mask PNG``: one-shot refinement from the command
line, with feature-matching points when no --points are given, and clear errors."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ppd.cli import main
from ppd.data.oneshot_pairs import make_pair
from ppd.metrics import iou


def write_pair(tmp_path, seed=5):
    p = make_pair(seed, "train")
    Image.fromarray(p.reference.image).save(tmp_path / "ref.png")
    Image.fromarray((p.ref_mask * 255).astype(np.uint8)).save(tmp_path / "ref_mask.png")
    Image.fromarray(p.target.image).save(tmp_path / "target.png")
    return p


def test_one_shot_refine_derives_points_and_writes_the_chosen_mask(tmp_path, capsys):
    p = write_pair(tmp_path)
    out = tmp_path / "out"
    argv = ["refine", "--image", str(tmp_path / "target.png"), "--reference", str(tmp_path / "ref.png"),
            "--reference-mask", str(tmp_path / "ref_mask.png"), "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "refined.json").read_text())
    fm = np.array(res["input_points"])
    assert fm.shape[1] == 3 and len(res["kept"]) == len(fm)  # x, y, label of the FM points
    assert res["reference"].endswith("ref.png") and res["trace"][-1].startswith("reference choice")
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    assert mask.shape == p.target.image.shape[:2] and iou(mask, p.target_mask) > 0.3
    # with --points the given points are refined, and the JSON names no derived points
    assert main(argv[:-1] + [str(tmp_path / "out2"), "--points", "60,60,1;10,10,0"]) == 0
    res2 = json.loads((tmp_path / "out2" / "refined.json").read_text())
    assert "input_points" not in res2 and len(res2["kept"]) == 2


def test_one_shot_refine_errors_name_the_flags(tmp_path, capsys):
    write_pair(tmp_path)
    target = ["refine", "--image", str(tmp_path / "target.png"), "--device", "cpu", "--out", str(tmp_path / "o")]
    cases = [
        ([], "give --points, or --reference and --reference-mask"),
        (["--reference", str(tmp_path / "ref.png")], "--reference and --reference-mask go together"),
    ]
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(tmp_path / "small.png")
    cases += [
        (["--reference", str(tmp_path / "ref.png"), "--reference-mask", str(tmp_path / "empty.png")], "is empty"),
        (["--reference", str(tmp_path / "ref.png"), "--reference-mask", str(tmp_path / "small.png")],
         "--reference-mask is 30 x 20 pixels but --reference is 256 x 256"),
        (["--reference", str(tmp_path / "ref.png"), "--reference-mask", str(tmp_path / "none.png")], "no mask file"),
    ]
    for extra, message in cases:
        assert main(target + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "o").exists()
