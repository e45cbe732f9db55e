"""Objects as the RUAC attackers see them: mask layouts, per-object pooled features and
colour statistics, and the object graph the style attacker's GCN runs on.

Masks are ground-truth object masks at model-input size, given either as a list of
``(K_i, S, S)`` tensors (one per image, ``K_i`` may be 0) or as a padded ``(N, K, S, S)``
tensor with a ``(N, K)`` bool ``valid`` tensor (``None``: every slot valid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F

Masks = Union[torch.Tensor, Sequence[torch.Tensor]]

__all__ = ["Masks", "ObjectGraph", "build_object_graph", "masked_average_pool", "region_style_stats"]


# ----------------------------------------------------------------------------- masks
def _mask_list(masks: Masks, valid: torch.Tensor | None, images: torch.Tensor) -> list[torch.Tensor]:
    """Normalise the accepted mask layouts to a list of ``(K_i, S, S)`` float {0, 1} tensors."""
    n, _, h, w = images.shape
    if isinstance(masks, torch.Tensor):
        if masks.dim() == 3:
            masks = masks[:, None]
        if masks.dim() != 4 or masks.shape[0] != n:
            raise ValueError(
                f"masks: expected a (N, K, S, S) or (N, S, S) tensor with N={n}, got shape {tuple(masks.shape)}"
            )
        if valid is None:
            out = list(masks.unbind(0))
        else:
            if valid.shape != masks.shape[:2]:
                raise ValueError(f"valid: expected shape {tuple(masks.shape[:2])}, got {tuple(valid.shape)}")
            out = [m[v.bool()] for m, v in zip(masks, valid)]
    else:
        out = [m[None] if m.dim() == 2 else m for m in masks]
        if len(out) != n:
            raise ValueError(f"masks: expected one entry per image ({n}), got {len(out)}")
    for i, m in enumerate(out):
        if m.dim() != 3 or tuple(m.shape[-2:]) != (h, w):
            raise ValueError(f"masks[{i}]: expected (K, {h}, {w}) at image size, got {tuple(m.shape)}")
    return [(m > 0.5).to(images.dtype) if m.dtype != torch.bool else m.to(images.dtype) for m in out]


def masked_average_pool(features: torch.Tensor, node_masks: torch.Tensor) -> torch.Tensor:
    """Mean feature vector inside each mask.

    Args:
        features: (C, h, w) feature map of one image.
        node_masks: (M, S, S) float masks at image size; they are area-pooled to ``(h, w)``
            so a region smaller than one feature cell still has a (fractional) weight.

    Returns:
        (M, C) pooled features; the global average where a mask is empty.
    """
    c, h, w = features.shape
    wts = F.adaptive_avg_pool2d(node_masks[:, None], (h, w))[:, 0].flatten(1)  # (M, h*w)
    f = features.flatten(1)  # (C, h*w)
    tot = wts.sum(1, keepdim=True)
    pooled = (wts @ f.t()) / tot.clamp_min(1e-6)
    glob = f.mean(1)[None].expand_as(pooled)
    return torch.where(tot > 1e-6, pooled, glob)


def region_style_stats(
    image: torch.Tensor, node_masks: torch.Tensor, min_area: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-region RGB mean and std of one image, with a global fallback for tiny regions.

    Args:
        image: (3, S, S) normalised image.
        node_masks: (M, S, S) float {0, 1} region masks.
        min_area: regions with fewer pixels than this use the whole image's statistics
            (a mean/std from a handful of pixels is noise, and AdaIN around it would shift
            the colour of the region's neighbourhood rather than restyle the region).

    Returns:
        ``(mu, sigma)``, each (M, 3), in normalised image units.
    """
    # Sums over ~10^6 pixels: float32 even under bf16 autocast.
    with torch.autocast(device_type=image.device.type, enabled=False):
        x = image.float().flatten(1)  # (3, P)
        m = node_masks.float().flatten(1)  # (M, P)
        area = m.sum(1, keepdim=True)  # (M, 1)
        mu = (m @ x.t()) / area.clamp_min(1.0)
        var = (m @ (x * x).t()) / area.clamp_min(1.0) - mu * mu
        sigma = var.clamp_min(0.0).add(1e-6).sqrt()
        g_mu = x.mean(1)
        g_sigma = x.var(1, unbiased=False).add(1e-6).sqrt()
        small = area < min_area
        mu = torch.where(small, g_mu[None], mu)
        sigma = torch.where(small, g_sigma[None], sigma)
    return mu.to(image.dtype), sigma.to(image.dtype)


# ----------------------------------------------------------------------------- graph
@dataclass
class ObjectGraph:
    """Object graph of one image: nodes ``0..K-1`` are the objects, node ``K`` the background.

    Attributes:
        edge_index: (2, E) int64 directed edges (both directions of every undirected edge,
            plus one self-loop per node), as torch_geometric expects.
        overlap: (K+1, K+1) bool, mask IoU > 0 (objects only).
        proximity: (K+1, K+1) bool, normalised min boundary distance < threshold (objects only).
        semantic: (K+1, K+1) bool, cosine of pooled features >= threshold (objects only).
        adjacency: (K+1, K+1) bool, the union of the three plus background-to-every-object
            and self-loops; ``edge_index`` lists its nonzeros.
    """

    edge_index: torch.Tensor
    overlap: torch.Tensor
    proximity: torch.Tensor
    semantic: torch.Tensor
    adjacency: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.adjacency.shape[0]


def _boundary_points(mask: torch.Tensor) -> torch.Tensor:
    """(G, G) bool -> (P, 2) float coordinates of its boundary pixels (4-neighbourhood)."""
    m = mask[None, None].float()
    eroded = -F.max_pool2d(-m, 3, 1, 1)
    edge = (m - eroded)[0, 0] > 0.5
    return edge.nonzero().float()


@torch.no_grad()
def build_object_graph(
    object_masks: torch.Tensor,
    pooled_features: torch.Tensor,
    proximity_threshold: float = 0.05,
    similarity_threshold: float = 0.5,
    grid: int = 64,
) -> ObjectGraph:
    """Build the RUAC object graph of one image (Appendix B.4).

    Edges between objects ``i != j`` come from three criteria (any one suffices):

    * overlap: IoU of the full-resolution masks > 0;
    * proximity: the minimum distance between the two masks' pixels (attained on their
      boundaries), measured on a ``grid x grid`` max-pooled copy of the masks (so that thin
      objects survive) and divided by that grid's diagonal, is below
      ``proximity_threshold`` (default 0.05: about 72 px at 1024 px);
    * semantic: cosine similarity of the mask-pooled backbone features >= ``similarity_threshold``.

    The background node (index ``K``) is joined to every object: it carries the scene's
    shared illumination, which every object's restyling should stay consistent with.
    Every node has a self-loop.

    Args:
        object_masks: (K, S, S) float/bool object masks (K may be 0).
        pooled_features: (K+1, C) mask-pooled features, objects first, background last.
        proximity_threshold: normalised boundary-distance threshold.
        similarity_threshold: cosine threshold.
        grid: resolution of the boundary-distance computation.

    Returns:
        :class:`ObjectGraph`.
    """
    k = object_masks.shape[0]
    dev = pooled_features.device
    if pooled_features.shape[0] != k + 1:
        raise ValueError(f"pooled_features: expected {k + 1} rows (objects + background), got {pooled_features.shape[0]}")
    m = object_masks.float() > 0.5
    eye = torch.eye(k + 1, dtype=torch.bool, device=dev)
    overlap = torch.zeros(k + 1, k + 1, dtype=torch.bool, device=dev)
    proximity = torch.zeros_like(overlap)
    semantic = torch.zeros_like(overlap)
    if k > 0:
        flat = m.flatten(1).float()
        inter = flat @ flat.t()
        overlap[:k, :k] = inter > 0
        g = min(grid, m.shape[-1], m.shape[-2])
        small = F.adaptive_max_pool2d(m[:, None].float(), (g, g))[:, 0] > 0.5
        pts = [_boundary_points(s) for s in small]
        diag = math.sqrt(2.0) * g
        for i in range(k):
            for j in range(i + 1, k):
                if overlap[i, j]:
                    close = True
                elif len(pts[i]) == 0 or len(pts[j]) == 0:
                    close = False
                else:
                    close = bool(torch.cdist(pts[i], pts[j]).min() / diag < proximity_threshold)
                proximity[i, j] = proximity[j, i] = close
        f = F.normalize(pooled_features[:k].float(), dim=1)
        semantic[:k, :k] = (f @ f.t()) >= similarity_threshold
    off = ~eye
    adjacency = ((overlap | proximity | semantic) & off) | eye
    adjacency[k, :] = True
    adjacency[:, k] = True
    return ObjectGraph(
        edge_index=adjacency.nonzero().t().contiguous(),
        overlap=overlap & off,
        proximity=proximity & off,
        semantic=semantic & off,
        adjacency=adjacency,
    )
