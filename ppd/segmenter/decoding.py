"""SAM2's image encoder and prompt / mask decoding as plain functions on torch tensors.

The ops of ``SAM2ImagePredictor.set_image`` and ``._predict``, plus the RUAC Bayesian
decoder (``ppd.ruac``) in place of SAM2's mask decoder, and the upsampling of its
uncertainty maps to image size (bilinear, as the masks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ppd.ruac.decoder import RuacDecoderOutput


def image_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the image encoder on a (N, 3, S, S) batch, as ``SAM2ImagePredictor.set_image``.

    Returns:
        ``(image_embed (N, C, h, w), [feat_s0 (N, C/8, 4h, 4w), feat_s1 (N, C/4, 2h, 2w)])``.
    """
    backbone_out = model.forward_image(x)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    n = x.shape[0]
    feats = [
        f.permute(1, 2, 0).reshape(n, -1, *hw) for f, hw in zip(vision_feats, feat_sizes)
    ]
    return feats[-1], feats[:-1]


def encode_prompts(
    model: torch.nn.Module,
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM2's prompt encoder on points, boxes and mask inputs (see :func:`decode`).

    Returns:
        ``(sparse (B, N, C), dense (B, C, h, w))`` prompt embeddings.
    """
    points = (coords, labels) if coords is not None else None
    if boxes is not None:
        box_coords = boxes.reshape(-1, 2, 2)
        box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(
            boxes.shape[0], 1
        )
        if points is not None:
            points = (torch.cat([box_coords, points[0]], 1), torch.cat([box_labels, points[1]], 1))
        else:
            points = (box_coords, box_labels)
    return model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)


def decode(
    model: torch.nn.Module,
    image_embed: torch.Tensor,
    high_res_feats: Sequence[torch.Tensor],
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder, as ``SAM2ImagePredictor._predict``.

    Args:
        image_embed: (1, C, h, w) (one image shared by all rows) or (B, C, h, w).
        high_res_feats: matching high-resolution features.
        coords: (B, K, 2) point coordinates in model-input pixels (image_size scale).
        labels: (B, K) int labels, 1 fg, 0 bg, -1 padding.
        boxes: (B, 4) XYXY boxes in model-input pixels, or None.
        mask_input: (B, 1, 4h, 4w) low-res mask logits, or None.
        multimask: return the three multimask outputs instead of one mask.

    Returns:
        ``(low_res_logits (B, M, 4h, 4w), iou_pred (B, M))`` with M = 3 or 1.
    """
    sparse, dense = encode_prompts(model, coords, labels, boxes, mask_input)
    n_rows = sparse.shape[0]
    repeat = image_embed.shape[0] == 1 and n_rows > 1
    logits, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=image_embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=repeat,
        high_res_features=list(high_res_feats),
    )
    return logits, iou


def decode_bayesian(
    model: torch.nn.Module,
    head: torch.nn.Module,
    image_embed: torch.Tensor,
    high_res_feats: Sequence[torch.Tensor],
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_input: torch.Tensor | None = None,
    multimask: bool = False,
    mode: str = "analytic",
    mc_samples: int = 20,
    generator: torch.Generator | None = None,
) -> RuacDecoderOutput:
    """Prompt encoder + RUAC Bayesian decoder (``ppd.ruac.BayesianMaskDecoder``).

    Arguments as :func:`decode`, plus the head's ``mode``, ``mc_samples`` and ``generator``.

    Returns:
        ``ppd.ruac.RuacDecoderOutput`` (logits, iou_pred, uncertainty (B, M, 4h, 4w), ...).
    """
    sparse, dense = encode_prompts(model, coords, labels, boxes, mask_input)
    repeat = image_embed.shape[0] == 1 and sparse.shape[0] > 1
    return head(
        image_embeddings=image_embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=repeat,
        high_res_features=list(high_res_feats),
        mode=mode,
        mc_samples=mc_samples,
        generator=generator,
        compute_kl=False,
    )


def uncertainty_to_image(unc: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """(B, M, h, w) low-res uncertainty -> float32 in [0, 1] at image size, bilinear as the
    masks: (B, M, H, W), or an object array of (M, H_b, W_b) when sizes differ."""
    if len(set(sizes)) == 1:
        up = F.interpolate(unc, sizes[0], mode="bilinear", align_corners=False)
        return up.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
    out = np.empty(len(sizes), dtype=object)
    for i, size in enumerate(sizes):
        up = F.interpolate(unc[i : i + 1], size, mode="bilinear", align_corners=False)[0]
        out[i] = up.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
    return out
