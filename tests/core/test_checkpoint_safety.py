"""Loading a model file never runs code the file names, and a bad file gets a reason
that names it: crafted configs and pickles are refused, empty / random / truncated files
are explained, NaN weights are warned about."""

from __future__ import annotations

import copy
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from ppd.models import (
    ALLOWED_TARGETS,
    BUNDLED_NAME,
    OFFICIAL_CONFIGS,
    build_sam2_model,
    check_model_config,
    official_model_config,
    tiny_model_config,
)
from ppd.ruac import load_head
from ppd.torch_files import load_torch

CLI = [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def tiny_state(tiny_checkpoint):
    return torch.load(tiny_checkpoint, weights_only=True)["model"]


def _crafted_config(node_path: tuple[str, ...], node: dict) -> dict:
    cfg = copy.deepcopy(tiny_model_config())
    parent = cfg
    for key in node_path[:-1]:
        parent = parent[key]
    parent[node_path[-1]] = node
    return cfg


class PrintOnLoad:
    """Unpickling this object calls ``print`` (what a malicious pickle would do)."""

    def __reduce__(self):
        return (print, ("CODE RAN WHILE LOADING",))


# ----------------------------------------------------------------------------- configs
def test_checkpoint_config_naming_builtins_print_is_refused_and_nothing_runs(tmp_path, tiny_state, capsys):
    cfg = _crafted_config(("image_encoder", "trunk"), {"_target_": "builtins.print", "_args_": ["CODE RAN"]})
    path = tmp_path / "crafted.pt"
    torch.save({"model": tiny_state, "config": cfg}, path)
    with pytest.raises(ValueError) as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    assert str(err.value).startswith(
        f"checkpoint {path}: the config names 'builtins.print' at image_encoder.trunk; ppd builds only sam2's own model classes"
    )
    assert "CODE RAN" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "node_path, node, message",
    [
        (("image_encoder", "neck", "position_encoding"), {"_target_": "os.system", "command": "true"}, "names 'os.system'"),
        (("image_encoder", "trunk", "_partial_"), True, "the Hydra key '_partial_' at image_encoder.trunk._partial_"),
        (("image_encoder", "trunk", "_args_"), [1], "the Hydra key '_args_'"),
        (("image_encoder", "scalp"), "${oc.env:HOME}", r"the interpolation '\$\{oc.env:HOME\}' at image_encoder.scalp"),
        (("_target_",), "sam2.modeling.backbones.hieradet.Hiera", "the root class 'sam2.modeling.backbones.hieradet.Hiera'"),
        (("memory_encoder", "fuser", "layer"), {"_target_": ["sam2.modeling.memory_encoder.CXBlock"]}, r"names \['sam2"),
    ],
)
def test_config_outside_the_allow_list_is_refused(node_path, node, message):
    with pytest.raises(ValueError, match=message):
        check_model_config(_crafted_config(node_path, node), "checkpoint x.pt")


def test_non_mapping_config_is_refused(tmp_path, tiny_state):
    path = tmp_path / "listcfg.pt"
    torch.save({"model": tiny_state, "config": ["sam2.modeling.sam2_base.SAM2Base"]}, path)
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(str(path))}: the model config must be a mapping, got list"):
        build_sam2_model(BUNDLED_NAME, checkpoint=path)


def test_every_config_ppd_builds_is_allowed():
    check_model_config(tiny_model_config(embed_dim=16, d_model=32))
    seen = set()
    for name in OFFICIAL_CONFIGS:
        cfg = check_model_config(official_model_config(name), name)
        stack = [cfg]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                seen.add(node.get("_target_"))
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    assert seen - {None} == ALLOWED_TARGETS  # the allow-list is exactly what sam2's models use


def test_cli_refuses_a_crafted_checkpoint_in_one_line(tmp_path, tiny_state):
    cfg = _crafted_config(("image_encoder", "trunk"), {"_target_": "builtins.print", "_args_": ["CODE RAN"]})
    path = tmp_path / "crafted.pt"
    torch.save({"model": tiny_state, "config": cfg}, path)
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    res = subprocess.run(
        [*CLI, "segment", "--image", str(image), "--points", "5,5,1", "--checkpoint", str(path), "--device", "cpu",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 2
    assert "CODE RAN" not in res.stdout + res.stderr
    assert res.stderr.startswith(f"ppd segment: error: checkpoint {path}: the config names 'builtins.print'")
    assert len(res.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- pickles
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_objects_are_refused_without_running(tmp_path, capsys, zip_format):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": PrintOnLoad()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ValueError) as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    assert str(err.value) == (
        f"could not read checkpoint {path}: it holds Python objects (print), not only tensors and plain data; "
        "ppd does not load such files, since loading them could run code"
    )
    assert "CODE RAN" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad files
def _truncated(path):
    torch.save({"model": {"w": torch.zeros(5000)}}, path)
    path.write_bytes(path.read_bytes()[:3000])


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), r"the file is empty \(0 bytes\); it was probably cut off while being written or copied$"),
        (lambda p: p.write_bytes(b"\x13\x37" + os.urandom(4094)), r"it is not a PyTorch file \(it starts with the bytes b'\\x137"),
        (lambda p: p.write_text("model: sam2\n"), "it is not a PyTorch file"),
        (_truncated, r"it is truncated or corrupt \(torch: PytorchStreamReader failed reading zip archive"),
    ],
    ids=["empty", "random-bytes", "text", "truncated"],
)
def test_unreadable_checkpoint_gets_a_reason_naming_it(tmp_path, make, reason):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(ValueError, match=f"^could not read checkpoint {re.escape(str(path))}: {reason}") as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_unreadable_ruac_head_gets_the_same_reasons(tmp_path):
    path = tmp_path / "ruac_head.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=f"^could not read RUAC head {re.escape(str(path))}: the file is empty"):
        load_head(path, mask_decoder=None)


def test_load_torch_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="cached embedding file not found"):
        load_torch(tmp_path / "x.pt", "cached embedding")


# ----------------------------------------------------------------------------- NaN weights
def test_nan_weights_load_with_a_warning_naming_the_file(tmp_path, tiny_state, caplog):
    state = {k: v.clone() for k, v in tiny_state.items()}
    key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    state[key][0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    torch.save({"model": state, "config": tiny_model_config()}, path)
    with caplog.at_level(logging.WARNING, logger="ppd.torch_files"):
        model, _ = build_sam2_model(BUNDLED_NAME, checkpoint=path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"checkpoint {path} has NaN or infinite weights in 1 tensor(s): {key}")
    assert torch.isnan(model.state_dict()[key]).any()


def test_finite_weights_load_without_a_warning(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="ppd.torch_files"):
        build_sam2_model(BUNDLED_NAME, checkpoint=tiny_checkpoint)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
