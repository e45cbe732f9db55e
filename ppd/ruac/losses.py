"""RUAC losses and curriculum: segmentation (focal + dice), calibration, loss-weight schedule.

The calibration loss follows the RUAC paper (seed 004, Eq. 5 and Appendix C.4) with its
dual stop-gradient; the curriculum follows the authors' 20-epoch schedule, expressed as
fractions of the total number of steps so that it applies to runs of any length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["focal_loss", "dice_loss", "segmentation_loss", "calibration_loss", "CurriculumSchedule"]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) -> (B, H*W)."""
    return x.flatten(1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.), mean over the pixels of each mask.

    Args:
        logits: (B, H, W) or (B, 1, H, W) mask logits.
        target: same shape, {0, 1}.
        alpha: foreground class weight (background gets ``1 - alpha``); < 0 disables it.
        gamma: focusing exponent.

    Returns:
        (B,) per-mask loss.
    """
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return _rows(loss).mean(1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss ``1 - (2 |P G| + 1) / (|P| + |G| + 1)`` per mask (SAM's form). Returns (B,)."""
    p = _rows(torch.sigmoid(logits))
    t = _rows(target.to(p.dtype))
    return 1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """SAM / SAM2 mask loss: ``20 x focal(alpha 0.25, gamma 2) + 1 x dice``, mean over masks.

    The 20:1 focal:dice ratio and the focal parameters are SAM's (and SAM2's training
    config, which RUAC fine-tunes with). ``logits`` and ``target`` must have the same
    shape, (B, H, W) or (B, 1, H, W): upsample low-res logits first.

    Returns:
        0-d tensor.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)}: expected the same shape")
    per = focal_weight * focal_loss(logits, target, alpha, gamma) + dice_weight * dice_loss(logits, target)
    return per.mean()


def calibration_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    u_sampled: torch.Tensor | None,
    u_analytic: torch.Tensor,
) -> torch.Tensor:
    """RUAC uncertainty-accuracy alignment loss with its dual stop-gradient.

    With ``e = |p - y|`` the per-pixel error and ``sg`` the stop-gradient::

        L1 = e * exp(-sg[u_s]) + (1 - e) * exp(sg[u_s])    # gradient through e only
        L2 = sg[e] * exp(-u_a) + (1 - sg[e]) * exp(u_a)    # gradient through u_a only
        L  = mean(L1 + L2)

    Both terms penalise confident errors (high e, low u) and uncertain correct pixels
    (low e, high u). L1 reaches the attacker (and the decoder's logits) through the error
    only; L2 shapes the posterior through the analytic uncertainty only. The stop-gradients
    close the shortcuts: the model cannot lower L1 by raising u_s everywhere, and the
    attacker cannot raise L2 by moving e without producing real errors in L1.

    Args:
        prob: predicted foreground probability p in [0, 1], any shape.
        target: ground truth y in {0, 1}, same shape.
        u_sampled: sampled (MC) uncertainty u_s in [0, 1], same shape; never receives
            gradient. ``None``: use ``u_analytic`` (detached) in its place.
        u_analytic: analytic uncertainty u_a in [0, 1], same shape.

    Returns:
        0-d tensor.
    """
    if u_sampled is None:
        u_sampled = u_analytic
    for name, t in (("target", target), ("u_sampled", u_sampled), ("u_analytic", u_analytic)):
        if t.shape != prob.shape:
            raise ValueError(f"{name}: expected shape {tuple(prob.shape)} (as prob), got {tuple(t.shape)}")
    e = (prob - target.to(prob.dtype)).abs()
    us = u_sampled.detach()
    l1 = e * torch.exp(-us) + (1 - e) * torch.exp(us)
    ed = e.detach()
    l2 = ed * torch.exp(-u_analytic) + (1 - ed) * torch.exp(u_analytic)
    return (l1 + l2).mean()


@dataclass
class CurriculumSchedule:
    """Three-phase RUAC loss schedule, boundaries as fractions of the total steps.

    The authors train 20 epochs: epochs 0-4 segmentation only; 5-6 add the KL term
    (0.05); from 7 on add the adversarial (AUE) branch (0.2) and lower the clean
    segmentation weight to 0.8. Hence the default boundaries 5/20 and 7/20.

    The weights are meant for::

        loss = seg * L_seg(clean) + kl * KL(clean)
             + adv * (L_seg(adv) + kl * KL(adv) + cal * L_cal(adv))

    (the attacker, behind the gradient reversal layer, maximises the adversarial bracket,
    as in the notes: ``seg_adv + 0.05 KL_adv + 0.1 L_cal``).
    """

    kl_start: float = 5 / 20
    """fraction of the total steps at which the KL term switches on (phase 2)"""
    adv_start: float = 7 / 20
    """fraction of the total steps at which the adversarial branch switches on (phase 3)"""
    kl_weight: float = 0.05
    """KL weight from phase 2 on"""
    adv_weight: float = 0.2
    """adversarial-branch weight in phase 3"""
    seg_weight_adv: float = 0.8
    """clean segmentation weight in phase 3 (1.0 before)"""
    cal_weight: float = 0.1
    """calibration-loss weight inside the adversarial branch (phase 3)"""

    def __post_init__(self) -> None:
        if not 0.0 <= self.kl_start <= self.adv_start <= 1.0:
            raise ValueError(
                f"kl_start={self.kl_start}, adv_start={self.adv_start}: expected 0 <= kl_start <= adv_start <= 1"
            )

    def phase(self, step: int, total: int) -> int:
        """1, 2 or 3 for a 0-based ``step`` of ``total`` steps (a boundary step starts the next phase)."""
        if total <= 0:
            raise ValueError(f"total: expected a positive number of steps, got {total}")
        frac = step / total
        if frac >= self.adv_start:
            return 3
        if frac >= self.kl_start:
            return 2
        return 1

    def weights(self, step: int, total: int) -> dict[str, float]:
        """Loss weights ``{"seg", "kl", "adv", "cal"}`` at ``step`` (see the class docstring)."""
        ph = self.phase(step, total)
        return {
            "seg": self.seg_weight_adv if ph == 3 else 1.0,
            "kl": self.kl_weight if ph >= 2 else 0.0,
            "adv": self.adv_weight if ph == 3 else 0.0,
            "cal": self.cal_weight if ph == 3 else 0.0,
        }
