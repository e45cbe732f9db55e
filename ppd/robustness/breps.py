"""BREPS prompt-space attacks: the best and the worst realistic box or point prompt of an object.

BREPS (Moskalenko et al., AAAI 2026) measures how far a promptable model's quality moves
when a realistic prompt moves. From the start prompt (the tight ground-truth box), Adam
moves the prompt's coordinates through the frozen prompt encoder and mask decoder (the
image embedding is computed once) to minimise

    s * DiceLoss(sigmoid(logits), gt) - lambda * log p(prompt | start)

with s = +1 (the best prompt, IoU-Max) or s = -1 (the worst, IoU-Min). The IoU of the
hard mask is measured at every visited prompt, the start included, and the best value
along the trajectory is kept, so IoU-Min <= IoU-Base <= IoU-Max always.

Box prior (the paper's): the complete-IoU loss c between the box and the start box
follows the Gamma distribution fitted to 25,000 human boxes, shape k = 1.7891955953866256,
scale theta = 0.12104836378138935 (log-density (k-1) ln c - c/theta - lgamma(k) -
k ln theta), lambda = 0.1; the prior is skipped while the box equals the start box (its
log-density is -inf at c = 0). Its mode, c = (k-1) theta ~ 0.1, sits away from the start:
the prior draws boxes towards the looseness real annotators show.

Point prior (ours; BREPS defines none): each point's displacement d from its start, as a
vector, follows an isotropic Gaussian with standard deviation ``sigma * sqrt(area)`` per
axis (area: the object's pixel count; ``sigma`` = 0.1 by default), so -log p =
|d|^2 / (2 (sigma sqrt(area))^2) + const per point, summed over the set's points. Why this
prior: a click is aimed at a spot and lands around it, most likely on it (a 2-D Gaussian
is the usual model of pointing error), unlike a box, whose looseness has a non-zero mode;
its log-density is finite and smooth at zero displacement, so no skip rule is needed;
scaled by sqrt(area) it is invariant to object and image size, as CIoU is; and sigma =
0.1 sqrt(area) puts a typical miss (about 0.125 sqrt(area)) under half the spacing of
:func:`ppd.prompts.ideal_prompts`' lattice (sqrt(area) / 3): a point may slide, but
not into the place of its neighbour. Labels never change.

Coordinates are optimised in image pixels; the learning rate is the paper's
``lr_mult * sqrt(H^2 + W^2) / (1024 sqrt 2)`` with ``lr_mult`` = 9 (9 px per step on a
1024 x 1024 image, the same fraction of the diagonal on any image). After each step the
prompt is projected back onto the image (coordinates clipped to [0, W-1] x [0, H-1]) and a
box's corners are re-ordered (x0 <= x1, y0 <= y1). ``steps`` Adam steps visit
``steps + 1`` prompts, the start included. As in the reference code, a box is decoded
with SAM's three masks and the one of highest predicted IoU is used; a point set with one
mask. With a RUAC head the head's mean logits are attacked (the masks the segmenter gives).

Batched: all rows (objects x directions) of an image optimise together, one decoder
forward and backward per step. Adam acts elementwise and the rows of the decoder do not
interact, so this equals one row at a time up to float rounding.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ppd.prompts import box_from_mask
from ppd.segmenter.decoding import decode, decode_bayesian
from ppd.segmenter.types import ImageEmbedding

logger = logging.getLogger(__name__)

#: The Gamma fit of the CIoU loss of human boxes to the tight box (BREPS, shape and scale).
GAMMA_SHAPE = 1.7891955953866256
GAMMA_SCALE = 0.12104836378138935
#: Weight of the realism prior, BREPS's lambda.
LAMBDA = 0.1
#: Learning rate multiplier of the reference code (``--lr_mult 9``).
LR_MULT = 9.0
#: Standard deviation of a point's displacement per axis, in units of sqrt(object area).
POINT_SIGMA = 0.1
#: SAM's point labels of a box's top-left and bottom-right corners.
BOX_LABELS = (2, 3)


# -- the loss terms --------------------------------------------------------------------

def ciou_loss(boxes: torch.Tensor, ref: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete-IoU loss (Zheng et al. 2020) of XYXY boxes (..., 4) to ``ref`` (..., 4).

    ``1 - IoU + rho^2 / c^2 + alpha v`` with rho the distance of the centres, c the
    diagonal of the smallest enclosing box, v = 4/pi^2 (atan(w_ref/h_ref) - atan(w/h))^2
    and alpha = v / (1 - IoU + v), held constant in the gradient: torchvision's
    ``complete_box_iou_loss``, as BREPS uses it (written here because torchvision is not
    a ppd dependency). Heights are floored at ``eps`` so a flat box stays finite.
    """
    x0, y0, x1, y1 = boxes.unbind(-1)
    a0, b0, a1, b1 = ref.unbind(-1)
    iw = (torch.minimum(x1, a1) - torch.maximum(x0, a0)).clamp(min=0)
    ih = (torch.minimum(y1, b1) - torch.maximum(y0, b0)).clamp(min=0)
    inter = iw * ih
    union = (x1 - x0) * (y1 - y0) + (a1 - a0) * (b1 - b0) - inter
    iou = inter / (union + eps)
    diag2 = (torch.maximum(x1, a1) - torch.minimum(x0, a0)) ** 2 + (torch.maximum(y1, b1) - torch.minimum(y0, b0)) ** 2 + eps
    rho2 = ((x0 + x1 - a0 - a1) / 2) ** 2 + ((y0 + y1 - b0 - b1) / 2) ** 2
    v = (4 / math.pi**2) * (torch.atan((a1 - a0) / (b1 - b0).clamp(min=eps)) - torch.atan((x1 - x0) / (y1 - y0).clamp(min=eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return 1 - iou + rho2 / diag2 + alpha * v


def gamma_log_density(c: torch.Tensor, shape: float = GAMMA_SHAPE, scale: float = GAMMA_SCALE) -> torch.Tensor:
    """Log-density of the Gamma distribution (shape k, scale theta) at ``c`` > 0:
    ``(k-1) ln c - c/theta - lgamma(k) - k ln theta`` (torch's ``Gamma`` with rate
    1/theta, as the reference code)."""
    dist = torch.distributions.Gamma(torch.tensor(shape, dtype=c.dtype), torch.tensor(1.0 / scale, dtype=c.dtype))
    return dist.log_prob(c)


def box_prior_nll(boxes: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """-log p_Gamma(CIoU loss of ``boxes`` (B, 4) to ``start`` (B, 4)), (B,); 0 for a box
    equal to its start, where the density is 0 and BREPS skips the term."""
    moved = (boxes != start).any(-1)
    c = ciou_loss(boxes, start)
    nll = -gamma_log_density(torch.where(moved, c.clamp(min=1e-12), torch.ones_like(c)))
    return torch.where(moved, nll, torch.zeros_like(nll))


def point_prior_nll(coords: torch.Tensor, start: torch.Tensor, sigma_px: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """-log p of the points' displacements, up to a constant: sum over the real points of
    ``|coords - start|^2 / (2 sigma^2)``, (B,). ``coords``, ``start``: (B, K, 2);
    ``sigma_px``: (B,) per-row standard deviation in pixels; ``real``: (B, K) bool."""
    d2 = ((coords - start) ** 2).sum(-1) * real
    return d2.sum(-1) / (2 * sigma_px**2)


def soft_dice_loss(prob: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-7) -> torch.Tensor:
    """``1 - 2 sum(p g) / (sum p + sum g)`` per row of (B, H, W) probabilities and
    targets, over the ``valid`` pixels only (all when None); (B,). As the binary
    ``DiceLoss`` of segmentation_models_pytorch (smooth 0, the denominator floored at
    ``eps``) that BREPS uses, per row."""
    if valid is not None:
        prob, gt = prob * valid, gt * valid
    inter = (prob * gt).flatten(1).sum(1)
    total = (prob + gt).flatten(1).sum(1)
    return 1 - 2 * inter / total.clamp(min=eps)


def learning_rate(height: int, width: int, mult: float = LR_MULT) -> float:
    """BREPS's step size for an image: ``mult * sqrt(H^2 + W^2) / (1024 sqrt 2)``."""
    return float(mult * math.hypot(height, width) / (1024 * math.sqrt(2)))


# -- results ----------------------------------------------------------------------------

@dataclass
class AttackResult:
    """The attack on N objects of one image.

    Attributes:
        kind: ``"box"`` or ``"points"``.
        start, worst, best: the start prompt and those giving the lowest and the highest
            IoU: (N, 4) XYXY boxes, or (N, K, 2) points (padding rows as given).
        labels: (N, K) point labels (-1 padding); (N, 2) ``BOX_LABELS`` for boxes.
        iou_base, iou_min, iou_max: (N,) IoU of the start, the worst and the best prompt.
        base_mask, worst_mask, best_mask: (N, H, W) bool masks of those prompts.
        min_step, max_step: (N,) the step at which the worst / best was found (0: start).
        seconds: wall time of the attack.
    """

    kind: str
    start: np.ndarray
    worst: np.ndarray
    best: np.ndarray
    labels: np.ndarray
    iou_base: np.ndarray
    iou_min: np.ndarray
    iou_max: np.ndarray
    base_mask: np.ndarray
    worst_mask: np.ndarray
    best_mask: np.ndarray
    min_step: np.ndarray
    max_step: np.ndarray
    seconds: float = 0.0

    @property
    def iou_delta(self) -> np.ndarray:
        """IoU-Delta = IoU-Max - IoU-Min, (N,)."""
        return self.iou_max - self.iou_min


# -- the attacks --------------------------------------------------------------------------

def box_attack(seg: Any, image: np.ndarray | ImageEmbedding, gts: np.ndarray, boxes: np.ndarray | None = None, *,
               steps: int = 50, lam: float = LAMBDA, lr_mult: float = LR_MULT, multimask: bool = True,
               batch: bool = True, valid: np.ndarray | None = None) -> AttackResult:
    """BREPS's box attack on every object of one image.

    Args:
        seg: a :class:`ppd.segmenter.Segmenter`.
        image: the image, or its :class:`ImageEmbedding`.
        gts: (N, H, W) bool ground-truth masks, none empty.
        boxes: (N, 4) XYXY start boxes in image pixels; default the tight boxes
            (:func:`ppd.prompts.box_from_mask`).
        steps: Adam steps per direction.
        lam: weight of the Gamma prior on the CIoU loss to the start box.
        lr_mult: the learning rate's multiplier (see :func:`learning_rate`).
        multimask: decode three masks and use the one of highest predicted IoU.
        batch: all objects and both directions in one decoder call per step (off: one
            object and direction at a time, for timing comparisons).
        valid: (H, W) bool pixels that count (others, e.g. void, count neither way).

    Returns:
        An :class:`AttackResult` of kind ``"box"``.
    """
    gts = _check_gts(gts)
    start = np.stack([box_from_mask(g) for g in gts]) if boxes is None else np.asarray(boxes, np.float32).reshape(len(gts), 4)
    corners = start.reshape(-1, 2, 2)
    labels = np.tile(np.asarray(BOX_LABELS), (len(gts), 1))

    def prior(xy: torch.Tensor, xy0: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        return box_prior_nll(xy.reshape(-1, 4), xy0.reshape(-1, 4))

    res = _attack(seg, image, gts, corners, labels, prior, steps, lam, lr_mult, multimask, batch, valid, is_box=True)
    res.kind = "box"
    for name in ("start", "worst", "best"):
        setattr(res, name, getattr(res, name).reshape(-1, 4))
    return res


def point_attack(seg: Any, image: np.ndarray | ImageEmbedding, gts: np.ndarray,
                 coords: Sequence[np.ndarray] | np.ndarray, labels: Sequence[np.ndarray] | np.ndarray, *,
                 steps: int = 50, lam: float = LAMBDA, sigma: float = POINT_SIGMA, lr_mult: float = LR_MULT,
                 multimask: bool = False, batch: bool = True, valid: np.ndarray | None = None) -> AttackResult:
    """The point attack on every object of one image: each object's point set moves
    under the Gaussian displacement prior of the module docstring; labels stay.

    Args:
        coords: per object its (K_i, 2) points (x, y) in image pixels (a list, or an
            (N, K, 2) array with padding labelled -1).
        labels: per object its (K_i,) labels, 1 / 0 (-1 padding).
        sigma: the prior's standard deviation per axis, in units of sqrt(object area).
        multimask: decode three masks and use the one of highest predicted IoU.
        The other arguments as :func:`box_attack`. With ``batch``, sets of different
        lengths are padded to the longest, and SAM's decoder attends to padding tokens:
        an object's numbers then depend slightly on the other objects' set lengths. Give
        sets of one length per call (the ``breps`` bench protocol groups them so) for
        numbers that equal one object at a time.

    Returns:
        An :class:`AttackResult` of kind ``"points"``; ``start``, ``worst`` and ``best``
        are (N, K_max, 2), padded as ``labels``.
    """
    gts = _check_gts(gts)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if len(coords) != len(gts) or len(labels) != len(gts):
        raise ValueError(f"need one point set per object: {len(gts)} objects, {len(coords)} coords, {len(labels)} labels")
    k_max = max(len(np.asarray(lab).reshape(-1)) for lab in labels)
    xy = np.zeros((len(gts), k_max, 2), np.float32)
    lab = np.full((len(gts), k_max), -1, np.int64)
    for i, (c, lb) in enumerate(zip(coords, labels)):
        lb = np.asarray(lb).reshape(-1)
        xy[i, :len(lb)] = np.asarray(c, np.float32).reshape(-1, 2)
        lab[i, :len(lb)] = lb
    if not (lab >= 0).any(1).all():
        raise ValueError("every object needs at least one point (label 0 or 1)")
    sigma_px = sigma * np.sqrt(gts.reshape(len(gts), -1).sum(1).astype(np.float64))

    def prior(p: torch.Tensor, p0: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        real = torch.as_tensor(lab[rows % len(gts)] >= 0, device=p.device)
        return point_prior_nll(p, p0, torch.as_tensor(sigma_px[rows % len(gts)], dtype=p.dtype, device=p.device), real)

    res = _attack(seg, image, gts, xy, lab, prior, steps, lam, lr_mult, multimask, batch, valid, is_box=False)
    res.kind = "points"
    return res


def _check_gts(gts: np.ndarray) -> np.ndarray:
    gts = np.asarray(gts, bool)
    if gts.ndim == 2:
        gts = gts[None]
    if gts.ndim != 3 or len(gts) == 0:
        raise ValueError(f"gts must be (N, H, W) masks with N >= 1, got shape {gts.shape}")
    if not gts.reshape(len(gts), -1).any(1).all():
        raise ValueError("every ground-truth mask must hold at least one pixel")
    return gts


def _attack(seg, image, gts, start, labels, prior: Callable, steps, lam, lr_mult, multimask, batch, valid, is_box) -> AttackResult:
    """Both directions for every object: rows r = d * N + i (d = 0 worst, 1 best)."""
    import time

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    t0 = time.perf_counter()
    emb = image if isinstance(image, ImageEmbedding) else seg.encode(image)
    h, w = (int(v) for v in emb.orig_hw)
    if gts.shape[1:] != (h, w):
        raise ValueError(f"masks of shape {gts.shape[1:]} do not match the image's {(h, w)}")
    n = len(gts)
    rows = np.arange(2 * n)
    signs = np.where(rows < n, -1.0, 1.0)
    lr = learning_rate(h, w, lr_mult)
    groups = [rows] if batch else [rows[i:i + 1] for i in range(2 * n)]
    out = [_optimise(seg, emb, gts, valid, start, labels, signs, g, prior, steps, lam, lr, multimask, is_box) for g in groups]
    iou = np.concatenate([o[0] for o in out])
    xy = np.concatenate([o[1] for o in out])
    masks = np.concatenate([o[2] for o in out])
    found = np.concatenate([o[3] for o in out])
    base_iou = np.concatenate([o[4] for o in out])[n:]
    base_mask = np.concatenate([o[5] for o in out])[n:]
    res = AttackResult("", start.copy(), xy[:n], xy[n:], labels.copy(), base_iou, iou[:n], iou[n:],
                       base_mask, masks[:n], masks[n:], found[:n], found[n:], time.perf_counter() - t0)
    logger.debug("%s attack on %d objects, %d steps: %.2f s", "box" if is_box else "point", n, steps, res.seconds)
    return res


def _optimise(seg, emb: ImageEmbedding, gts, valid, start, labels, signs, rows, prior, steps, lam, lr, multimask, is_box):
    """Adam on the coordinates of ``rows`` (indices into the 2N rows). Returns per row
    the extreme IoU, its coordinates, mask and step, and the start's IoU and mask."""
    n = len(gts)
    dev = seg.device
    h, w = (int(v) for v in emb.orig_hw)
    obj = rows % n
    b = len(rows)
    # Inference tensors (from encode) cannot be saved for backward: copies can.
    embed = emb.image_embed.clone()
    high = [f.clone() for f in emb.high_res_feats]
    keep = None if valid is None else torch.as_tensor(np.asarray(valid, bool).reshape(-1), dtype=torch.float32, device=dev)
    gt = torch.as_tensor(gts[obj].reshape(b, -1), dtype=torch.float32, device=dev)
    if keep is not None:
        gt = gt * keep
    n_gt = gt.sum(1)
    sign = torch.as_tensor(signs[rows], dtype=torch.float32, device=dev)
    lab = torch.as_tensor(labels[obj], dtype=torch.int, device=dev)
    xy0 = torch.as_tensor(start[obj], dtype=torch.float32, device=dev)
    xy = xy0.clone().requires_grad_(True)
    scale = torch.tensor([seg.image_size / w, seg.image_size / h], dtype=torch.float32, device=dev)
    limit = torch.tensor([w - 1, h - 1], dtype=torch.float32, device=dev)
    up = _Upsample(seg.image_size // 4, (h, w), dev)
    opt = torch.optim.Adam([xy], lr=lr)
    best_iou = torch.full((b,), float("nan"), device=dev)
    best_xy = xy0.clone()
    best_step = torch.zeros(b, dtype=torch.long, device=dev)
    for t in range(steps + 1):
        with seg._autocast():
            low = _low_logits(seg, embed, high, xy * scale, lab, multimask)
        logits = up(low)
        with torch.no_grad():
            hard = logits.detach() > seg.mask_threshold
            inter = torch.einsum("bp,bp->b", hard.float(), gt)
            union = torch.count_nonzero(hard if keep is None else hard & keep.bool(), 1) + n_gt - inter
            iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            if t == 0:
                base_iou = iou.clone()
                better = torch.ones(b, dtype=torch.bool, device=dev)
            else:
                better = torch.where(sign > 0, iou > best_iou, iou < best_iou)
            best_iou = torch.where(better, iou, best_iou)
            best_xy = torch.where(better[:, None, None], xy.detach(), best_xy)
            best_step = torch.where(better, t, best_step)
        if t == steps:
            break
        dice = _DiceFromLogits.apply(logits, gt, n_gt, keep)
        loss = (sign * dice + lam * prior(xy, xy0, rows)).sum()
        (grad,) = torch.autograd.grad(loss, xy)
        xy.grad = grad
        opt.step()
        with torch.no_grad():  # back onto the image; a box keeps its corners ordered
            xy.copy_(torch.minimum(xy.clamp(min=0), limit))
            if is_box:
                xy.copy_(torch.stack([torch.minimum(xy[:, 0], xy[:, 1]), torch.maximum(xy[:, 0], xy[:, 1])], 1))
    # The masks of the start and of the extremes, decoded again in a batch of the same
    # rows as in the loop (so with the same rounding) instead of kept at every step.
    masks = []
    with torch.no_grad(), seg._autocast():
        for coords in (best_xy, xy0):
            hard = up(_low_logits(seg, embed, high, coords * scale, lab, multimask)) > seg.mask_threshold
            if keep is not None:
                hard &= keep.bool()
            masks.append(hard.reshape(b, h, w).cpu().numpy())
    return (best_iou.cpu().numpy().astype(np.float64), best_xy.cpu().numpy(), masks[0],
            best_step.cpu().numpy(), base_iou.cpu().numpy().astype(np.float64), masks[1])


def _low_logits(seg, embed, high, coords, labels, multimask) -> torch.Tensor:
    """(B, h, w) float32 low-res mask logits of prompt rows (model-input pixels),
    differentiable in ``coords``: SAM2's decoder, or the segmenter's RUAC head (its
    mean logits), the mask of highest predicted IoU when ``multimask``."""
    if seg.ruac_head is None:
        low, iou = decode(seg.model, embed, high, coords, labels, None, None, multimask)
    else:
        gen = None
        if seg.uncertainty_mode == "mc":
            gen = torch.Generator(device=seg.device).manual_seed(seg.mc_seed)
        out = decode_bayesian(seg.model, seg.ruac_head, embed, high, coords, labels, None, None, multimask,
                              seg.uncertainty_mode, seg.mc_samples, gen)
        low, iou = out.logits, out.iou_pred
    low, iou = low.float(), iou.float()
    return low[torch.arange(low.shape[0], device=low.device), iou.argmax(1)]


class _DiceFromLogits(torch.autograd.Function):
    """:func:`soft_dice_loss` of ``sigmoid(logits)`` per row, (B,), on flattened (B, P)
    logits and targets (``gt`` already zero outside ``keep``; ``n_gt``: its row sums).

    Written out because the pixel passes dominate the attack on a CPU: the gradient
    ``-2 (g S - I) / S^2 * p (1 - p)`` (S = sum p + sum g, I = sum p g) in a few
    in-place passes, against twice as many through autograd."""

    @staticmethod
    def forward(ctx, logits, gt, n_gt, keep):
        prob = torch.sigmoid(logits)
        inter = torch.einsum("bp,bp->b", prob, gt)
        total = ((prob.sum(1) if keep is None else prob @ keep) + n_gt).clamp(min=1e-7)
        ctx.save_for_backward(prob, gt, inter, total, keep)
        return 1 - 2 * inter / total

    @staticmethod
    def backward(ctx, grad_out):
        prob, gt, inter, total, keep = ctx.saved_tensors
        grad = gt * total[:, None]
        grad -= inter[:, None] if keep is None else inter[:, None] * keep
        grad *= prob
        grad *= 1 - prob
        grad *= (-2 * grad_out / total**2)[:, None]
        return grad, None, None, None


class _Upsample:
    """SAM2's bilinear upsampling of low-res logits (B, s, s) to image size, flattened
    to (B, H * W), as two matrix products (it is separable): the same values as
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` up to float rounding,
    with a backward pass several times faster than F.interpolate's on a CPU."""

    def __init__(self, side: int, size: tuple[int, int], device: torch.device) -> None:
        self.rows, self.cols = (_linear_matrix(n, side, device) for n in size)

    def __call__(self, low: torch.Tensor) -> torch.Tensor:
        return (self.rows @ low.float() @ self.cols.T).flatten(1)


def _linear_matrix(n_out: int, n_in: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear upsampling (``align_corners=False``)."""
    eye = torch.eye(n_in, device=device)[:, None]
    return F.interpolate(eye, n_out, mode="linear", align_corners=False)[:, 0].T.contiguous()
