"""Building SAM2 models: the one place where ppd touches Hydra.

Importing ``sam2`` initialises Hydra globally (``sam2/__init__.py``). ppd imports the
``sam2`` package only inside :func:`build_sam2_model`, so ``import ppd`` stays free of
Hydra and of torchvision (which ``sam2.sam2_image_predictor`` would pull in and which
cannot load on CPU-only machines here).

Two kinds of model are known:

* the official SAM2 / SAM2.1 configs shipped inside the ``sam2`` package
  (``sam2.1_hiera_t`` ... ``sam2_hiera_l``), with a checkpoint file the user downloaded;
* ``sam2-tiny-synthetic``: a small SAM2-architecture model (256 px input) trained by
  ``ppd pretrain`` on procedural scenes and shipped in ``ppd/assets``. Its checkpoint
  carries its own model config, so a re-trained variant loads the same way.

Loading a model file never calls anything the file names: checkpoints are read with
``torch.load(weights_only=True)`` (tensors and plain data only), and a config stored in a
checkpoint is built only after :func:`check_model_config` found in it nothing but the
sam2 model classes ppd builds (:data:`ALLOWED_TARGETS`) and plain values.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ppd.torch_files import load_torch, warn_nonfinite

logger = logging.getLogger(__name__)

#: official model name -> config path inside the ``sam2`` package
OFFICIAL_CONFIGS: dict[str, str] = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
}

BUNDLED_NAME = "sam2-tiny-synthetic"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
BUNDLED_CHECKPOINT = ASSETS_DIR / "sam2_tiny_synthetic.pt"

CHECKPOINT_HELP = (
    "Official SAM2 / SAM2.1 checkpoints are published by Meta in the "
    "facebookresearch/sam2 repository (see its README, 'Download Checkpoints', and the "
    "script checkpoints/download_ckpts.sh) and on the Hugging Face hub as "
    "facebook/sam2.1-hiera-tiny etc. ppd never downloads them: pass the local file."
)

# The post-processing flags sam2's own ``build_sam2`` adds (apply_postprocessing=True).
POSTPROCESSING_OVERRIDES = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


#: The classes a model config may name as ``_target_``: those of the official SAM2 /
#: SAM2.1 image models (the ``model:`` nodes of their configs) and of the tiny model.
ROOT_TARGET = "sam2.modeling.sam2_base.SAM2Base"
ALLOWED_TARGETS = frozenset({
    ROOT_TARGET,
    "sam2.modeling.backbones.hieradet.Hiera",
    "sam2.modeling.backbones.image_encoder.FpnNeck",
    "sam2.modeling.backbones.image_encoder.ImageEncoder",
    "sam2.modeling.memory_attention.MemoryAttention",
    "sam2.modeling.memory_attention.MemoryAttentionLayer",
    "sam2.modeling.memory_encoder.CXBlock",
    "sam2.modeling.memory_encoder.Fuser",
    "sam2.modeling.memory_encoder.MaskDownSampler",
    "sam2.modeling.memory_encoder.MemoryEncoder",
    "sam2.modeling.position_encoding.PositionEmbeddingSine",
    "sam2.modeling.sam.transformer.RoPEAttention",
})


def check_model_config(cfg: Any, source: str = "model config") -> dict[str, Any]:
    """Return ``cfg`` if building it can only construct sam2 model classes, else raise.

    Allowed: nested dicts (string keys) and lists of None, bool, int, float and str, where
    every ``_target_`` is one of :data:`ALLOWED_TARGETS` and the root's is SAM2Base. Refused:
    any other ``_target_``, Hydra's other special keys (``_partial_``, ``_args_``, ...),
    OmegaConf interpolations (``${...}``, which may call resolvers) and other value types.

    Raises:
        ValueError: naming ``source``, the offending entry and its place in the config.
    """
    def refuse(where: str, what: str) -> ValueError:
        return ValueError(
            f"{source}: {what} at {where or 'the top level'}; ppd builds only sam2's own model "
            "classes from a stored config (ppd.models.ALLOWED_TARGETS) and refuses to load it"
        )

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise refuse(where, f"a non-string key {key!r}")
                here = f"{where}.{key}" if where else key
                if key == "_target_":
                    if not isinstance(value, str) or value not in ALLOWED_TARGETS:
                        raise refuse(where, f"the config names {value!r}")
                elif key.startswith("_") and key.endswith("_"):
                    raise refuse(here, f"the Hydra key {key!r}")
                else:
                    walk(value, here)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str):
            if "${" in node:
                raise refuse(where, f"the interpolation {node!r}")
        elif node is not None and not isinstance(node, (bool, int, float)):
            raise refuse(where, f"a value of type {type(node).__name__}")

    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: the model config must be a mapping, got {type(cfg).__name__}")
    if cfg.get("_target_") != ROOT_TARGET:
        raise refuse("", f"the root class {cfg.get('_target_')!r} (expected {ROOT_TARGET!r})")
    walk(cfg, "")
    return cfg


def known_models() -> list[str]:
    """Names accepted by :func:`ppd.load_segmenter`."""
    return [BUNDLED_NAME, *OFFICIAL_CONFIGS]


def tiny_model_config(
    image_size: int = 256,
    embed_dim: int = 32,
    stages: tuple[int, ...] = (1, 2, 3, 2),
    global_att_blocks: tuple[int, ...] = (4, 7),
    window_spec: tuple[int, ...] = (8, 4, 4, 4),
    d_model: int = 64,
    mem_dim: int = 16,
) -> dict[str, Any]:
    """Config (``sam2`` YAML schema, ``model:`` node) of the small SAM2-architecture model.

    The image path (Hiera trunk + FPN neck), prompt encoder and mask decoder are the
    ones segmentation uses. The memory modules exist only because ``SAM2Base`` requires
    them (video tracking); they are kept minimal and are never trained or used.
    """
    channels = [embed_dim * 2**i for i in range(len(stages))][::-1]
    feat = image_size // 16
    pos = lambda n: {  # noqa: E731 - a tiny local constructor for a repeated node
        "_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine",
        "num_pos_feats": n,
        "normalize": True,
        "scale": None,
        "temperature": 10000,
    }
    attn = {
        "_target_": "sam2.modeling.sam.transformer.RoPEAttention",
        "rope_theta": 10000.0,
        "feat_sizes": [feat, feat],
        "embedding_dim": d_model,
        "num_heads": 1,
        "downsample_rate": 1,
        "dropout": 0.0,
    }
    return {
        "_target_": "sam2.modeling.sam2_base.SAM2Base",
        "image_encoder": {
            "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder",
            "scalp": 1,
            "trunk": {
                "_target_": "sam2.modeling.backbones.hieradet.Hiera",
                "embed_dim": embed_dim,
                "num_heads": 1,
                "stages": list(stages),
                "global_att_blocks": list(global_att_blocks),
                "window_spec": list(window_spec),
                "window_pos_embed_bkg_spatial_size": [4, 4],
            },
            "neck": {
                "_target_": "sam2.modeling.backbones.image_encoder.FpnNeck",
                "position_encoding": pos(d_model),
                "d_model": d_model,
                "backbone_channel_list": channels,
                "fpn_top_down_levels": [2, 3],
                "fpn_interp_model": "nearest",
            },
        },
        "memory_attention": {
            "_target_": "sam2.modeling.memory_attention.MemoryAttention",
            "d_model": d_model,
            "pos_enc_at_input": True,
            "num_layers": 1,
            "layer": {
                "_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer",
                "activation": "relu",
                "dim_feedforward": 2 * d_model,
                "dropout": 0.0,
                "pos_enc_at_attn": False,
                "self_attention": attn,
                "d_model": d_model,
                "pos_enc_at_cross_attn_keys": True,
                "pos_enc_at_cross_attn_queries": False,
                "cross_attention": {**attn, "rope_k_repeat": True, "kv_in_dim": mem_dim},
            },
        },
        "memory_encoder": {
            "_target_": "sam2.modeling.memory_encoder.MemoryEncoder",
            "out_dim": mem_dim,
            "position_encoding": pos(mem_dim),
            "mask_downsampler": {
                "_target_": "sam2.modeling.memory_encoder.MaskDownSampler",
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
            },
            "fuser": {
                "_target_": "sam2.modeling.memory_encoder.Fuser",
                "layer": {
                    "_target_": "sam2.modeling.memory_encoder.CXBlock",
                    "dim": d_model,
                    "kernel_size": 7,
                    "padding": 3,
                    "layer_scale_init_value": 1e-6,
                    "use_dwconv": True,
                },
                "num_layers": 1,
            },
        },
        "num_maskmem": 7,
        "image_size": image_size,
        "sigmoid_scale_for_mem_enc": 20.0,
        "sigmoid_bias_for_mem_enc": -10.0,
        "use_mask_input_as_output_without_sam": True,
        "directly_add_no_mem_embed": True,
        "no_obj_embed_spatial": True,
        "use_high_res_features_in_sam": True,
        "multimask_output_in_sam": True,
        "iou_prediction_use_sigmoid": True,
        "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": True,
        "proj_tpos_enc_in_obj_ptrs": True,
        "use_signed_tpos_enc_to_obj_ptrs": True,
        "only_obj_ptrs_in_the_past_for_eval": True,
        "pred_obj_scores": True,
        "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True,
        "multimask_output_for_tracking": True,
        "use_multimask_token_for_obj_ptr": True,
        "multimask_min_pt_num": 0,
        "multimask_max_pt_num": 1,
        "use_mlp_for_obj_ptr_proj": True,
        "compile_image_encoder": False,
    }


def _instantiate(model_cfg: dict[str, Any], apply_postprocessing: bool, source: str = "model config") -> torch.nn.Module:
    """Instantiate a ``model:`` config node with Hydra, as ``sam2.build_sam2`` does, once
    :func:`check_model_config` has accepted it."""
    check_model_config(model_cfg, source)
    import sam2  # noqa: F401  (initialises Hydra's config module, see module docstring)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = copy.deepcopy(model_cfg)
    if apply_postprocessing:
        extra = dict(cfg.get("sam_mask_decoder_extra_args") or {})
        extra.update(POSTPROCESSING_OVERRIDES)
        cfg["sam_mask_decoder_extra_args"] = extra
    node = OmegaConf.create(cfg)
    OmegaConf.resolve(node)
    return instantiate(node, _recursive_=True)


def official_model_config(name: str) -> dict[str, Any]:
    """The ``model:`` node of an official config, read through sam2's Hydra setup."""
    import sam2  # noqa: F401
    from hydra import compose
    from omegaconf import OmegaConf

    cfg = compose(config_name=OFFICIAL_CONFIGS[name])
    return OmegaConf.to_container(cfg.model, resolve=True)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}. {CHECKPOINT_HELP}")
    ckpt = load_torch(path, "checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise ValueError(
            f"checkpoint {path} is not in the official SAM2 format "
            "(a dict with a 'model' state_dict)"
        )
    odd = [k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ValueError(f"checkpoint {path}: its 'model' state_dict holds non-tensor entries, e.g. {odd[0]!r}")
    warn_nonfinite(ckpt["model"], path)
    return ckpt


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, name: str):
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        raise ValueError(
            f"checkpoint {path} does not match model {name!r}: " + "; ".join(parts)
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"checkpoint {path} does not fit the config of {name!r}: {len(bad)} tensors "
            f"have the wrong shape, e.g. {k}: checkpoint {tuple(state[k].shape)} vs "
            f"model {tuple(own[k].shape)}"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def build_sam2_model(
    name: str = BUNDLED_NAME,
    checkpoint: str | os.PathLike | None = None,
    apply_postprocessing: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build a SAM2 model on CPU in eval mode and load its weights.

    Args:
        name: ``"sam2-tiny-synthetic"`` or an official config name (see :func:`known_models`).
        checkpoint: path of a ``{"model": state_dict}`` file. Required for official
            configs; for the bundled model it defaults to the shipped asset.
        apply_postprocessing: add the post-processing flags of sam2's ``build_sam2``.

    Returns:
        ``(model, info)`` where info holds ``name``, ``checkpoint`` and ``config``.
    """
    if name == BUNDLED_NAME:
        path = Path(checkpoint) if checkpoint is not None else BUNDLED_CHECKPOINT
        if not path.is_file() and checkpoint is None:
            raise FileNotFoundError(
                f"the bundled model file {path} is missing from this install; "
                "re-install ppd or train one with `ppd pretrain --out DIR`"
            )
        ckpt = _read_checkpoint(path)
        cfg = ckpt.get("config") or tiny_model_config()
        source = f"checkpoint {path}"
    elif name in OFFICIAL_CONFIGS:
        if checkpoint is None:
            raise ValueError(f"model {name!r} needs a checkpoint file. {CHECKPOINT_HELP}")
        path = Path(checkpoint)
        ckpt = _read_checkpoint(path)
        cfg = official_model_config(name)
        source = f"sam2's config of {name!r}"
    else:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(known_models())}")
    model = _instantiate(cfg, apply_postprocessing, source)
    _load_state(model, ckpt["model"], path, name)
    model.eval()
    logger.info("loaded %s from %s", name, path)
    return model, {"name": name, "checkpoint": str(path), "config": cfg, "meta": ckpt.get("meta", {})}


def new_tiny_model(config: dict[str, Any] | None = None, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised ``sam2-tiny-synthetic`` model (for training), in train mode."""
    torch.manual_seed(seed)
    model = _instantiate(config or tiny_model_config(), apply_postprocessing=True)
    model.train()
    return model
