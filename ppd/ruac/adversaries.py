"""RUAC training-only adversaries: gradient reversal, style attacker, deformation attacker.

RUAC (Sec. 3.3 and Appendix B) trains its Bayesian mask decoder against
two learned attackers that perturb the *image* (never the features):

* :class:`StyleAttacker`: per-object AdaIN colour transfer with bounded residuals,
  coordinated across the objects of an image by a 2-layer GCN over an object graph
  (:func:`~ppd.ruac.object_graph.build_object_graph`);
* :class:`DeformationAttacker`: a small, zero-mean, bounded displacement field that warps
  the image *and* its ground-truth masks with the same ``grid_sample`` call.

Both predict their parameters from the frozen backbone features of the clean image and
start as the identity (zero-initialised last layers), so training begins with clean
samples. They are min-max trained in one backward pass through :func:`grad_reverse`:
the attackers' outputs pass through a gradient reversal layer, so minimising the
segmentation loss updates the decoder downhill and the attackers uphill.

Image tensors are SAM2 model inputs: ``(N, 3, S, S)`` float, normalised with the ImageNet
mean/std (:func:`ppd.segmenter.preprocess`). Masks are ground-truth object masks at the
same ``S x S`` resolution, given either as a list of ``(K_i, S, S)`` tensors (one per
image, ``K_i`` may be 0) or as a padded ``(N, K, S, S)`` tensor with a ``(N, K)`` bool
``valid`` tensor (``None``: every slot valid). A ``(N, S, S)`` tensor means one object per
image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.nn import GCNConv

from ppd.ruac.object_graph import (
    Masks,
    ObjectGraph,
    _mask_list,
    build_object_graph,
    masked_average_pool,
    region_style_stats,
)

logger = logging.getLogger(__name__)

__all__ = [
    "GradientReversal",
    "grad_reverse",
    "ObjectGraph",
    "build_object_graph",
    "masked_average_pool",
    "region_style_stats",
    "StyleParams",
    "StyleAttacker",
    "DeformationAttacker",
    "warp_with_flow",
]


# ----------------------------------------------------------------------------- GRL
class GradientReversal(torch.autograd.Function):
    """Gradient reversal layer (Ganin & Lempitsky, 2015).

    Forward: identity. Backward: the incoming gradient times ``-scale``. Placed between an
    attacker's output and the model, it lets one optimiser step minimise the loss for the
    model and maximise it for the attacker.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return -ctx.scale * grad_output, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-scale`` backward."""
    return GradientReversal.apply(x, scale)


# ----------------------------------------------------------------------------- style
@dataclass
class StyleParams:
    """Per-node AdaIN parameters of a batch (nodes of all images concatenated).

    Node order per image: its objects in the given order, then its background node.

    Attributes:
        scale: (M, 3) multiplier of the region's std, in ``[1 - r, 1 + r]``.
        shift: (M, 3) additive change of the region's mean (normalised units), in ``[-eps, eps]``.
        mu, sigma: (M, 3) the clean region statistics the AdaIN is taken around.
        node_masks: per image, the (K_i + 1, S, S) node masks (objects, then background).
        graphs: per image, its :class:`ObjectGraph` (empty list when the GCN is off).
    """

    scale: torch.Tensor
    shift: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    node_masks: list[torch.Tensor]
    graphs: list[ObjectGraph]


class StyleAttacker(nn.Module):
    """Per-object AdaIN style attacker with bounded residuals and GCN coordination.

    For every image, the nodes are its objects plus one background node (the pixels no
    object covers). For each node:

    1. RGB mean ``mu`` and std ``sigma`` inside its mask (the whole image's statistics if
       the region has fewer than ``max(min_pixels, min_area_frac * S * S)`` pixels);
    2. an MLP on ``[LayerNorm(mask-pooled features), mu, sigma]`` predicts a 6-d residual
       ``(a, b)`` (one ``a`` and one ``b`` per RGB channel), bounded as
       ``scale = 1 - r + 2 r sigmoid(a)`` (std multiplier in ``[1 - r, 1 + r]``) and
       ``shift = eps tanh(b)`` (mean offset in ``[-eps, eps]`` normalised units);
    3. (``use_gcn``) the object graph (:func:`build_object_graph`) and a 2-layer
       ``GCNConv`` refine the bounded residuals ``d = (scale - 1, shift)``:
       node input ``[d, Linear(pooled feature) -> 6]``,
       ``d' = d + gcn_residual_scale * GCN(...)``, then ``d'`` is clamped back to its
       bounds (``|scale - 1| <= r``, ``|shift| <= eps``), so the GCN can coordinate but
       never exceed the budget (our reading of "clamp to +-eps": each component is
       clamped to its own bound);
    4. AdaIN around the clean statistics: ``x_k = (x - mu) / sigma * (sigma * scale) + mu
       + shift``, computed as ``x + (scale - 1)(x - mu) + shift`` (identical, and exactly
       ``x`` at scale 1, shift 0);
    5. composite node by node: background first, then objects in order (a later object
       wins where masks overlap).

    So inside a region that is not covered by a later object and uses its own statistics,
    the new mean is ``mu + shift`` and the new std is ``sigma * scale``.

    Defaults: ``eps = 0.3`` normalised units (~0.07 in [0, 1] pixel units, roughly +-15-20%
    of a typical mean) and ``r = 0.5`` (+-50% on stds), as in the RUAC notes. The last MLP
    layer and the last GCN layer are zero-initialised, so at initialisation ``a = b = 0``,
    ``scale = 1``, ``shift = 0`` and the output image equals the input exactly.

    ``grl_scale``: the bounded ``(scale, shift)`` pass through :func:`grad_reverse` with
    this scale, so a loss minimised by the model is maximised by the attacker; ``None``
    disables the reversal (e.g. to train the attacker alone on a loss it should maximise
    by negating it yourself).

    Features are detached: the attacker never sends gradient into the (frozen) encoder.
    """

    def __init__(
        self,
        feature_dim: int = 256,
        hidden_dim: int = 64,
        eps: float = 0.3,
        r: float = 0.5,
        use_gcn: bool = True,
        gcn_hidden_dim: int = 32,
        gcn_residual_scale: float = 0.1,
        proximity_threshold: float = 0.05,
        similarity_threshold: float = 0.5,
        min_pixels: int = 16,
        min_area_frac: float = 1e-3,
        grl_scale: float | None = 1.0,
    ) -> None:
        super().__init__()
        if not 0 < r < 1:
            raise ValueError(f"r: expected 0 < r < 1 (std multiplier in [1-r, 1+r]), got {r}")
        if eps <= 0:
            raise ValueError(f"eps: expected > 0, got {eps}")
        self.eps = float(eps)
        self.r = float(r)
        self.use_gcn = use_gcn
        self.gcn_residual_scale = float(gcn_residual_scale)
        self.proximity_threshold = proximity_threshold
        self.similarity_threshold = similarity_threshold
        self.min_pixels = min_pixels
        self.min_area_frac = min_area_frac
        self.grl_scale = grl_scale
        self.norm = nn.LayerNorm(feature_dim)
        self.mlp = nn.Sequential(nn.Linear(feature_dim + 6, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 6))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        if use_gcn:
            self.node_proj = nn.Linear(feature_dim, 6)
            self.gcn1 = GCNConv(12, gcn_hidden_dim)
            self.gcn2 = GCNConv(gcn_hidden_dim, 6)
            nn.init.zeros_(self.gcn2.lin.weight)
            nn.init.zeros_(self.gcn2.bias)

    def min_area(self, size: int) -> float:
        """Pixel count below which a region uses the global image statistics."""
        return max(float(self.min_pixels), self.min_area_frac * size * size)

    def style_params(
        self, images: torch.Tensor, masks: Masks, features: torch.Tensor, valid: torch.Tensor | None = None
    ) -> StyleParams:
        """Predict the bounded per-node AdaIN parameters (see the class docstring).

        Args:
            images: (N, 3, S, S) normalised images.
            masks: object masks (module docstring layouts).
            features: (N, C, h, w) frozen backbone features of the clean images.
            valid: (N, K) bool for a padded mask tensor.
        """
        n, _, s, _ = images.shape
        if features.dim() != 4 or features.shape[0] != n:
            raise ValueError(f"features: expected (N={n}, C, h, w), got {tuple(features.shape)}")
        features = features.detach()
        mlist = _mask_list(masks, valid, images)
        node_masks, pooled, mus, sigmas, graphs = [], [], [], [], []
        for i in range(n):
            obj = mlist[i]
            bg = (1.0 - obj.amax(0, keepdim=True)) if obj.shape[0] else torch.ones_like(images[i, :1])
            nm = torch.cat([obj, bg], 0)
            node_masks.append(nm)
            mu, sigma = region_style_stats(images[i], nm, self.min_area(s))
            mus.append(mu)
            sigmas.append(sigma)
            pooled.append(masked_average_pool(features[i], nm))
        mu, sigma, pf = torch.cat(mus), torch.cat(sigmas), torch.cat(pooled)
        ab = self.mlp(torch.cat([self.norm(pf), mu, sigma], 1))
        a, b = ab[:, :3], ab[:, 3:]
        d = torch.cat([2 * self.r * torch.sigmoid(a) - self.r, self.eps * torch.tanh(b)], 1)  # (scale-1, shift)
        if self.use_gcn:
            edges, offset = [], 0
            for i in range(n):
                g = build_object_graph(
                    mlist[i], pooled[i], self.proximity_threshold, self.similarity_threshold
                )
                graphs.append(g)
                edges.append(g.edge_index + offset)
                offset += g.num_nodes
            edge_index = torch.cat(edges, 1)
            h = torch.cat([d, self.node_proj(pf)], 1)
            h = F.gelu(self.gcn1(h, edge_index))
            d = d + self.gcn_residual_scale * self.gcn2(h, edge_index)
            bound = d.new_tensor([self.r] * 3 + [self.eps] * 3)
            d = torch.maximum(torch.minimum(d, bound), -bound)
        if self.grl_scale is not None:
            d = grad_reverse(d, self.grl_scale)
        return StyleParams(
            scale=1.0 + d[:, :3], shift=d[:, 3:], mu=mu, sigma=sigma, node_masks=node_masks, graphs=graphs
        )

    def forward(
        self, images: torch.Tensor, masks: Masks, features: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Restyle every object (and the background) of every image.

        Args:
            images: (N, 3, S, S) normalised images.
            masks: object masks (module docstring layouts).
            features: (N, C, h, w) frozen backbone features of the clean images.
            valid: (N, K) bool for a padded mask tensor.

        Returns:
            ``(attacked (N, 3, S, S), diagnostics)``; diagnostics are detached 0-d tensors:
            ``mean_abs_shift``, ``max_abs_shift``, ``mean_abs_scale_delta``,
            ``max_abs_scale_delta``, ``num_edges`` (directed, self-loops included).
        """
        p = self.style_params(images, masks, features, valid)
        out, start = [], 0
        for i, nm in enumerate(p.node_masks):
            x = images[i]
            k1 = nm.shape[0]
            # Composite background first, then the objects in order: each pixel takes the
            # AdaIN of the last node covering it (one gather instead of K+1 full passes).
            rank = torch.arange(k1, device=x.device)
            rank = torch.where(rank == k1 - 1, 0, rank + 1)  # background 0, object j -> j + 1
            winner_rank = ((nm > 0.5) * (rank + 1).view(-1, 1, 1)).amax(0) - 1
            node = torch.where(winner_rank == 0, k1 - 1, winner_rank - 1)  # (S, S) node index
            sl = slice(start, start + k1)
            sc = p.scale[sl][node].permute(2, 0, 1)
            sh = p.shift[sl][node].permute(2, 0, 1)
            mu = p.mu[sl][node].permute(2, 0, 1)
            out.append(x + (sc - 1.0) * (x - mu) + sh)
            start += k1
        dev = images.device
        diag = {
            "mean_abs_shift": p.shift.detach().abs().mean(),
            "max_abs_shift": p.shift.detach().abs().max(),
            "mean_abs_scale_delta": (p.scale.detach() - 1).abs().mean(),
            "max_abs_scale_delta": (p.scale.detach() - 1).abs().max(),
            "num_edges": torch.tensor(sum(g.edge_index.shape[1] for g in p.graphs), device=dev),
        }
        return torch.stack(out), diag


# ----------------------------------------------------------------------------- deformation
def _base_grid(n: int, h: int, w: int, device, dtype) -> torch.Tensor:
    """(N, H, W, 2) ``grid_sample`` coordinates of the pixel centres (align_corners=False).

    ``(2 i + 1) / S - 1`` is exact in floating point for power-of-two sizes, so a zero
    flow samples exactly at the pixel centres and the warp is exactly the identity.
    """
    xs = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1
    ys = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)[None].expand(n, h, w, 2)


def warp_with_flow(x: torch.Tensor, flow_px: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Backward-warp ``x`` by a displacement field: ``out[p] = x[p + flow[p]]`` (bilinear).

    Args:
        x: (N, C, H, W) tensor.
        flow_px: (N, 2, H, W) displacement in pixels, channel 0 along x (width), 1 along y.
        padding_mode: ``grid_sample`` padding ("border" for images, "zeros" for masks).
    """
    n, _, h, w = x.shape
    grid = _base_grid(n, h, w, x.device, x.dtype)
    scale = flow_px.new_tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)
    grid = grid + (flow_px * scale).permute(0, 2, 3, 1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


class DeformationAttacker(nn.Module):
    """Bounded, zero-mean, non-rigid deformation attacker (Appendix B.3).

    Per image, the mask input is two channels at feature resolution: the union of the
    image's object masks and their boundaries (morphological gradient of each area-pooled
    object mask, max over objects). It is encoded by two 3x3 convs and added to a 1x1
    projection of the frozen features; a fuser (two 3x3 conv + GELU) and a zero-initialised
    3x3 offset conv give a raw 2-channel field at ``(h, w)``, upsampled bilinearly to
    ``S x S`` (so the field is smooth). Then:

    * ``ratio = sigmoid(raw) - 0.5`` (each component in (-0.5, 0.5));
    * zero-mean inside the object region (the union of the image's objects; the whole
      image when it has none): removes global translation, keeps local warps; each
      component is now in (-1, 1);
    * ``flow = ratio * eps_px / sqrt(2)`` with ``eps_px = max_displacement * S``, so the
      Euclidean displacement of every pixel is below ``eps_px``. Default
      ``max_displacement = 2.4 / 1024`` (the RUAC notes' ~2.4 px at 1024 px, i.e. 0.6 px
      at 256 px: the bound is proportional to the image size).

    The image is warped with ``warp_with_flow`` (bilinear, border padding) and the masks with
    the SAME field (bilinear, zero padding, then threshold at 0.5; the paper warps its GT
    bilinearly, thresholding keeps the targets binary). Images with several objects get one
    field shared by all their objects (the paper warps objects independently and averages
    overlaps; one field keeps image and every mask in exact correspondence).

    The offset conv is zero-initialised, so ``raw = 0``, ``ratio = 0`` and the attacker is the
    identity at initialisation (exactly, for power-of-two ``S``). ``grl_scale`` as in
    :class:`StyleAttacker` (applied to the flow). Features are detached.

    The paper reuses a frozen copy of SAM2's memory encoder (MaskDownSampler + fuser) as
    the mask/feature fusion; this small trainable head is our simpler stand-in.
    """

    def __init__(
        self,
        feature_dim: int = 256,
        hidden_dim: int = 32,
        max_displacement: float = 2.4 / 1024,
        grl_scale: float | None = 1.0,
    ) -> None:
        super().__init__()
        if max_displacement <= 0:
            raise ValueError(f"max_displacement: expected > 0 (fraction of the image side), got {max_displacement}")
        self.max_displacement = float(max_displacement)
        self.grl_scale = grl_scale
        self.feat_proj = nn.Conv2d(feature_dim, hidden_dim, 1)
        self.mask_enc = nn.Sequential(
            nn.Conv2d(2, hidden_dim, 3, padding=1), nn.GELU(), nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)
        )
        self.fuser = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1), nn.GELU(),
        )
        self.offset = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def eps_px(self, size: int) -> float:
        """Bound on the Euclidean displacement, in pixels, for an ``size x size`` image."""
        return self.max_displacement * size

    def predict_flow(
        self, images: torch.Tensor, masks: Masks, features: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, 2, S, S) displacement field in pixels (channel 0: x, 1: y); see the class docstring."""
        n, _, s, s2 = images.shape
        if features.dim() != 4 or features.shape[0] != n:
            raise ValueError(f"features: expected (N={n}, C, h, w), got {tuple(features.shape)}")
        features = features.detach()
        h, w = features.shape[-2:]
        mlist = _mask_list(masks, valid, images)
        union_full, mask_in = [], []
        for m in mlist:
            if m.shape[0] == 0:
                union_full.append(torch.ones_like(images[0, 0]))
                mask_in.append(images.new_zeros(2, h, w))
                continue
            union_full.append(m.amax(0))
            pm = F.adaptive_avg_pool2d(m[:, None], (h, w))  # (K, 1, h, w) coverage
            edge = F.max_pool2d(pm, 3, 1, 1) + F.max_pool2d(-pm, 3, 1, 1)  # dilate - erode
            mask_in.append(torch.cat([pm.amax(0), edge.amax(0)], 0))
        region = torch.stack(union_full)[:, None]  # (N, 1, S, S)
        region = torch.where(region.flatten(1).sum(1).view(n, 1, 1, 1) > 0, region, torch.ones_like(region))
        z = self.feat_proj(features) + self.mask_enc(torch.stack(mask_in))
        raw = self.offset(self.fuser(z))
        raw = F.interpolate(raw, size=(s, s2), mode="bilinear", align_corners=False)
        ratio = torch.sigmoid(raw) - 0.5
        mean = (ratio * region).sum((2, 3), keepdim=True) / region.sum((2, 3), keepdim=True)
        flow = (ratio - mean) * (self.eps_px(max(s, s2)) / math.sqrt(2.0))
        if self.grl_scale is not None:
            flow = grad_reverse(flow, self.grl_scale)
        return flow

    def forward(
        self, images: torch.Tensor, masks: Masks, features: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Masks, dict[str, torch.Tensor]]:
        """Warp images and their object masks with one predicted field per image.

        Args:
            images: (N, 3, S, S) normalised images (typically the style attacker's output).
            masks: object masks (module docstring layouts).
            features: (N, C, h, w) frozen backbone features of the clean images.
            valid: (N, K) bool for a padded mask tensor.

        Returns:
            ``(warped images (N, 3, S, S), warped masks, diagnostics)``. The masks come back
            in the layout and dtype they came in (bool stays bool, float becomes {0, 1});
            padded slots are warped too. Diagnostics (detached 0-d tensors):
            ``max_displacement_px`` and ``mean_displacement_px`` (Euclidean norm of the
            field over all pixels) and ``eps_px``.
        """
        flow = self.predict_flow(images, masks, features, valid)
        warped = warp_with_flow(images, flow, "border")
        if isinstance(masks, torch.Tensor):
            m = masks[:, None] if masks.dim() == 3 else masks
            wm = warp_with_flow(m.to(images.dtype), flow.detach(), "zeros") > 0.5
            wm = wm[:, 0] if masks.dim() == 3 else wm
            out_masks: Masks = wm if masks.dtype == torch.bool else wm.to(masks.dtype)
        else:
            out_masks = []
            for i, m in enumerate(masks):
                m3 = m[None] if m.dim() == 2 else m
                if m3.shape[0] == 0:
                    out_masks.append(m)
                    continue
                wm = warp_with_flow(m3[None].to(images.dtype), flow[i:i + 1].detach(), "zeros")[0] > 0.5
                wm = wm[0] if m.dim() == 2 else wm
                out_masks.append(wm if m.dtype == torch.bool else wm.to(m.dtype))
        norm = flow.detach().norm(dim=1)
        diag = {
            "max_displacement_px": norm.max(),
            "mean_displacement_px": norm.mean(),
            "eps_px": torch.tensor(self.eps_px(max(images.shape[-2:])), device=images.device),
        }
        return warped, out_masks, diag
