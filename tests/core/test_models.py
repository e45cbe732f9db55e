"""Model factory: names, checkpoint loading and its error messages, the tiny model."""

import subprocess
import sys
from importlib import resources

import pytest
import torch

from ppd import models
from ppd.models import (
    BUNDLED_NAME,
    OFFICIAL_CONFIGS,
    build_sam2_model,
    known_models,
    new_tiny_model,
    tiny_model_config,
)
from ppd.segmenter import load_segmenter


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def tiny_state(tiny_checkpoint):
    """The state_dict written by the ``tiny_checkpoint`` fixture (read-only)."""
    return torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]


# ----------------------------------------------------------------------------- names
def test_known_models_lists_bundled_then_every_official_config():
    names = known_models()
    assert names[0] == BUNDLED_NAME == "sam2-tiny-synthetic"
    assert names[1:] == list(OFFICIAL_CONFIGS)
    assert {"sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"} <= set(names)
    assert {"sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l"} <= set(names)


def test_every_official_config_file_ships_with_sam2():
    root = resources.files("sam2")
    for name, cfg in OFFICIAL_CONFIGS.items():
        assert root.joinpath(cfg).is_file(), f"{name}: {cfg} is not in the sam2 package"


def test_unknown_name_lists_known_names(tiny_checkpoint):
    with pytest.raises(ValueError) as err:
        load_segmenter("sam3_hiera_t", checkpoint=tiny_checkpoint, device="cpu")
    msg = str(err.value)
    assert "sam3_hiera_t" in msg
    assert "sam2.1_hiera_t" in msg and BUNDLED_NAME in msg and "sam2_hiera_l" in msg


def test_official_name_without_checkpoint_says_where_checkpoints_are():
    with pytest.raises(ValueError, match="facebookresearch/sam2") as err:
        build_sam2_model("sam2.1_hiera_t")
    assert "sam2.1_hiera_t" in str(err.value)


def test_importing_ppd_pulls_in_neither_hydra_nor_torchvision():
    code = (
        "import sys, ppd, ppd.models, ppd.segmenter, ppd.data.scenes\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('hydra', 'torchvision', 'sam2')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- files
def test_missing_file_is_file_not_found_with_help(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as err:
        build_sam2_model("sam2.1_hiera_t", checkpoint=path)
    assert str(path) in str(err.value) and "facebookresearch/sam2" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_segmenter(BUNDLED_NAME, checkpoint=path, device="cpu")


def test_missing_bundled_asset_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "BUNDLED_CHECKPOINT", tmp_path / "sam2_tiny_synthetic.pt")
    with pytest.raises(FileNotFoundError, match="ppd pretrain"):
        build_sam2_model()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("state_dict", id="bare-state-dict"),
        pytest.param([1, 2, 3], id="list"),
        pytest.param({"model": [1, 2]}, id="model-not-a-dict"),
        pytest.param({"weights": {}}, id="no-model-key"),
    ],
)
def test_file_not_in_official_format(tmp_path, tiny_state, content):
    if content == "state_dict":
        content = dict(tiny_state)
    path = _save(tmp_path / "bad.pt", content)
    with pytest.raises(ValueError, match="'model' state_dict") as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    assert str(path) in str(err.value)


def test_corrupt_file_is_value_error(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        build_sam2_model(BUNDLED_NAME, checkpoint=path)


# ----------------------------------------------------------------------------- keys
def test_missing_key_is_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    gone = "sam_mask_decoder.iou_token.weight"
    del state[gone]
    path = _save(tmp_path / "missing.pt", {"model": state, "config": tiny_model_config()})
    with pytest.raises(ValueError) as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    msg = str(err.value)
    assert "1 missing keys" in msg and gone in msg and "unexpected" not in msg


def test_unexpected_key_is_named(tmp_path, tiny_state):
    state = {**tiny_state, "head.extra.weight": torch.zeros(3)}
    path = _save(tmp_path / "extra.pt", {"model": state, "config": tiny_model_config()})
    with pytest.raises(ValueError) as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    msg = str(err.value)
    assert "1 unexpected keys" in msg and "head.extra.weight" in msg and "missing" not in msg


def test_many_missing_keys_are_abbreviated(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("sam_mask_decoder.")}
    n_gone = len(tiny_state) - len(state)
    assert n_gone > 5
    path = _save(tmp_path / "nodecoder.pt", {"model": state, "config": tiny_model_config()})
    with pytest.raises(ValueError) as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    msg = str(err.value)
    assert f"{n_gone} missing keys" in msg and f"(+{n_gone - 5} more)" in msg


def test_wrong_shape_does_not_fit(tmp_path, tiny_state):
    key = "sam_mask_decoder.iou_token.weight"
    state = {**tiny_state, key: torch.zeros(tiny_state[key].shape[0], 7)}
    path = _save(tmp_path / "shape.pt", {"model": state, "config": tiny_model_config()})
    with pytest.raises(ValueError, match="does not fit") as err:
        build_sam2_model(BUNDLED_NAME, checkpoint=path)
    assert key in str(err.value) and "(1, 7)" in str(err.value)


def test_tiny_checkpoint_under_official_name_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(ValueError) as err:
        build_sam2_model("sam2.1_hiera_t", checkpoint=tiny_checkpoint)
    msg = str(err.value)
    assert "'sam2.1_hiera_t'" in msg and tiny_checkpoint in msg
    # the tiny model has fewer trunk blocks: keys are missing (and others unexpected)
    assert "does not match" in msg and "missing keys: image_encoder.trunk.blocks." in msg and "unexpected keys" in msg


# ----------------------------------------------------------------------------- loading
def test_round_trip_restores_every_tensor(tiny_checkpoint, tiny_state):
    model, info = build_sam2_model(BUNDLED_NAME, checkpoint=tiny_checkpoint)
    assert not model.training
    assert info["name"] == BUNDLED_NAME and info["checkpoint"] == tiny_checkpoint
    assert info["config"] == tiny_model_config()
    state = model.state_dict()
    assert state.keys() == tiny_state.keys()
    for k, v in tiny_state.items():
        assert torch.equal(state[k], v), k


def test_half_precision_checkpoint_loads_as_float32(tmp_path, tiny_state):
    state = {k: v.half() if v.is_floating_point() else v for k, v in tiny_state.items()}
    path = _save(tmp_path / "half.pt", {"model": state, "config": tiny_model_config()})
    model, _ = build_sam2_model(BUNDLED_NAME, checkpoint=path)
    got = model.state_dict()
    key = "sam_mask_decoder.iou_token.weight"
    assert got[key].dtype == torch.float32
    assert torch.equal(got[key], tiny_state[key].half().float())


def test_postprocessing_flags_follow_sam2_build_sam2(tiny_checkpoint):
    dec = build_sam2_model(BUNDLED_NAME, checkpoint=tiny_checkpoint)[0].sam_mask_decoder
    assert dec.dynamic_multimask_via_stability is True
    assert dec.dynamic_multimask_stability_delta == 0.05
    assert dec.dynamic_multimask_stability_thresh == 0.98
    plain = build_sam2_model(BUNDLED_NAME, checkpoint=tiny_checkpoint, apply_postprocessing=False)[0]
    assert plain.sam_mask_decoder.dynamic_multimask_via_stability is False


def test_config_stored_in_checkpoint_is_used(tmp_path):
    cfg = tiny_model_config(embed_dim=16, d_model=32)
    small = new_tiny_model(cfg, seed=0)
    path = _save(tmp_path / "small.pt", {"model": small.state_dict(), "config": cfg})
    model, info = build_sam2_model(BUNDLED_NAME, checkpoint=path)
    assert info["config"] == cfg and model.hidden_dim == 32


# ----------------------------------------------------------------------------- tiny model
def test_tiny_model_size_and_grid(tiny_segmenter, tiny_embedding):
    n_params = sum(p.numel() for p in tiny_segmenter.model.parameters())
    assert 2.5e6 <= n_params <= 5e6
    assert tiny_segmenter.image_size == 256 and tiny_segmenter.embed_dim == 64
    assert tiny_embedding.grid_size == (16, 16)
    assert tiny_embedding.image_embed.shape == (1, 64, 16, 16)
    assert [tuple(f.shape) for f in tiny_embedding.high_res_feats] == [(1, 8, 64, 64), (1, 16, 32, 32)]


def test_new_tiny_model_is_seeded_and_in_train_mode(tiny_state):
    a = new_tiny_model(seed=0)
    assert a.training
    sa = a.state_dict()
    assert all(torch.equal(sa[k], tiny_state[k]) for k in tiny_state)
    sb = new_tiny_model(seed=1).state_dict()
    assert not torch.equal(sa["sam_mask_decoder.iou_token.weight"], sb["sam_mask_decoder.iou_token.weight"])
