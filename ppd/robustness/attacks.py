"""Adversarial image attacks on a promptable segmenter: PGD, SegPGD and CosPGD, L-inf and L2.

The attacks perturb the image and keep the prompts fixed. The forward pass they
differentiate is the whole model as :meth:`ppd.segmenter.Segmenter.encode` and
:meth:`~ppd.segmenter.Segmenter.predict` run it: resize to ``image_size`` and ImageNet
normalisation (:mod:`ppd.segmenter.transforms`), the image encoder with the no-memory
embedding and the decoder's high-resolution projections
(:func:`ppd.segmenter.decoding.image_features`), then the prompt encoder and mask decoder
(:func:`~ppd.segmenter.decoding.decode`, or the RUAC head's
:func:`~ppd.segmenter.decoding.decode_bayesian`), the low-res logits upsampled bilinearly
to the image. With ``multimask`` the mask of the highest predicted IoU is kept, as
``predict`` does.

Conventions, those of SemSegBench (Agnihotri et al.) and its mmsegmentation code:

* the image lives in [0, 255] at its own size; ``eps`` and ``alpha`` are in that scale
  (L-inf eps 8 = 8/255 of the range, alpha 2.55 = 0.01 x 255; L2 eps 64, alpha 25.5 =
  0.1 x 255, the L2 norm over all pixels and channels of the image);
* random start: uniform noise in [-eps, eps] (L-inf), or uniform noise in [-1, 1] scaled
  to L2 norm eps (L2); then ``iterations`` steps ``x + alpha * sign(g)`` (L-inf) or
  ``x + alpha * g / ||g||_2`` (L2), each followed by the projection onto the eps-ball
  around the clean image and onto [0, 255];
* the loss is the per-pixel binary cross-entropy of each prompt set's mask logits against
  its target mask, every pixel weighted, then averaged over the image's pixels and summed
  over the prompt sets (one attack serves all objects of an image). The weights:

  - PGD: 1;
  - SegPGD (Gu et al., ECCV 2022): ``1 - t / (2T)`` on pixels the current prediction gets
    right, ``t / (2T)`` on the wrong ones, at step t = 0 .. T-1 (as the reference code);
  - CosPGD (Agnihotri et al., ICML 2024): the cosine similarity of the pixel's predicted
    class distribution (softmax over background and foreground, i.e. ``(1 - s, s)`` with
    ``s = sigmoid(logit)``) to the one-hot label, detached.

The attacks maximise the loss (they minimise its negative); void pixels (``care`` False)
weigh nothing. Everything random comes from a seed: the same seed, image and model give
the same perturbation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ppd.segmenter.decoding import decode, decode_bayesian, image_features
from ppd.segmenter.transforms import IMAGENET_MEAN, IMAGENET_STD, image_to_float

logger = logging.getLogger(__name__)

METHODS = ("pgd", "segpgd", "cospgd")
NORMS = ("linf", "l2")
#: The six attacks by name (``METHOD_NORM``), in table order.
ATTACKS = tuple(f"{m}_{n}" for m in METHODS for n in NORMS)
#: SemSegBench's threat models on [0, 255] images: eps and step size per norm.
EPS = {"linf": 8.0, "l2": 64.0}
ALPHA = {"linf": 0.01 * 255.0, "l2": 0.1 * 255.0}
ITERATIONS = 20
PIXEL_MAX = 255.0


@dataclass(frozen=True)
class Attack:
    """One attack: its weighting (``method``), threat model and schedule.

    Attributes:
        method: ``"pgd"``, ``"segpgd"`` or ``"cospgd"``.
        norm: ``"linf"`` or ``"l2"``.
        eps: radius of the perturbation ball in [0, 255] pixel units (>= 0).
        alpha: step size in the same units (> 0).
        iterations: gradient steps (>= 0).
        random_start: start from a random point of the ball (else from the clean image).
    """

    method: str
    norm: str
    eps: float
    alpha: float
    iterations: int = ITERATIONS
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"attack method must be one of {METHODS}, got {self.method!r}")
        if self.norm not in NORMS:
            raise ValueError(f"attack norm must be one of {NORMS}, got {self.norm!r}")
        if not self.eps >= 0 or not math.isfinite(self.eps):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")
        if not self.alpha > 0 or not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")

    @property
    def name(self) -> str:
        return f"{self.method}_{self.norm}"


def named_attack(
    name: str,
    iterations: int = ITERATIONS,
    eps_linf: float = EPS["linf"],
    eps_l2: float = EPS["l2"],
    alpha_linf: float = ALPHA["linf"],
    alpha_l2: float = ALPHA["l2"],
) -> Attack:
    """The attack of one of :data:`ATTACKS` (``"segpgd_l2"`` ...) with SemSegBench's
    settings unless given (all in [0, 255] pixel units)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    method, norm = name.split("_")
    eps = eps_linf if norm == "linf" else eps_l2
    alpha = alpha_linf if norm == "linf" else alpha_l2
    return Attack(method, norm, float(eps), float(alpha), int(iterations))


@dataclass
class PromptGroup:
    """Prompt sets decoded in one call, each with the mask it should produce.

    Attributes:
        point_coords: (B, K, 2) points (x, y) in image pixels.
        point_labels: (B, K): 1 foreground, 0 background, -1 padding.
        targets: (B, H, W) bool masks the rows should predict (the attack pushes away).
        multimask: decode three masks per row and keep the highest predicted IoU.
    """

    point_coords: np.ndarray
    point_labels: np.ndarray
    targets: np.ndarray
    multimask: bool = False

    def __post_init__(self) -> None:
        self.point_coords = np.asarray(self.point_coords, np.float32)
        self.point_labels = np.asarray(self.point_labels, np.int64)
        self.targets = np.asarray(self.targets, bool)
        if self.point_coords.ndim != 3 or self.targets.ndim != 3 or len(self.targets) != len(self.point_coords):
            raise ValueError(f"a prompt group needs (B, K, 2) coords and (B, H, W) targets with the same B; got "
                             f"{self.point_coords.shape} and {self.targets.shape}")


@dataclass
class AttackResult:
    """The adversarial image and the loss along the way.

    Attributes:
        image: (H, W, 3) float32 adversarial image in [0, 255].
        perturbation: (H, W, 3) float32 ``image - clean``.
        losses: the unweighted loss (summed BCE) at the start point and after every step,
            ``iterations + 1`` values.
        clean: (H, W, 3) float32 clean image in [0, 1].
    """

    image: np.ndarray
    perturbation: np.ndarray
    losses: list[float] = field(default_factory=list)
    clean: np.ndarray | None = field(default=None, repr=False)

    def as_float(self) -> np.ndarray:
        """The image as (H, W, 3) float32 in [0, 1], the format :meth:`Segmenter.encode`
        takes: the clean image plus the perturbation, so that a zero perturbation gives the
        clean image's exact values (``image / 255`` may differ from them in the last bit)."""
        if self.clean is None:
            return np.clip(self.image / PIXEL_MAX, 0.0, 1.0).astype(np.float32)
        return np.clip(self.clean + self.perturbation / PIXEL_MAX, 0.0, 1.0).astype(np.float32)


# -- per-pixel weights ---------------------------------------------------------------
def segpgd_weights(logits: torch.Tensor, target: torch.Tensor, step: int, steps: int) -> torch.Tensor:
    """SegPGD's weights: ``1 - t/(2T)`` where ``logits > 0`` agrees with ``target``,
    ``t/(2T)`` where it does not (t = ``step`` from 0, T = ``steps``)."""
    lam = step / (2.0 * max(steps, 1))
    right = (logits > 0) == target
    return torch.where(right, 1.0 - lam, lam).to(logits.dtype)


def cospgd_weights(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CosPGD's weights: cosine similarity of ``softmax([0, logit]) = (1 - s, s)`` to the
    one-hot label, i.e. ``p_label / sqrt((1 - s)^2 + s^2)``; in [1/sqrt 2 .. 1] on a
    right pixel, [0, 1/sqrt 2] on a wrong one. Detached (a weight, not a loss term)."""
    s = torch.sigmoid(logits.detach())
    p_label = torch.where(target, s, 1.0 - s)
    return p_label / torch.sqrt((1.0 - s) ** 2 + s**2)


def pixel_weights(method: str, logits: torch.Tensor, target: torch.Tensor, step: int, steps: int) -> torch.Tensor:
    """The per-pixel loss weights of ``method`` (see the module docstring), detached."""
    with torch.no_grad():
        if method == "pgd":
            return torch.ones_like(logits)
        if method == "segpgd":
            return segpgd_weights(logits, target, step, steps)
        if method == "cospgd":
            return cospgd_weights(logits, target)
    raise ValueError(f"attack method must be one of {METHODS}, got {method!r}")


# -- the threat model ------------------------------------------------------------------
def project(delta: torch.Tensor, clean: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """``delta`` projected onto the eps-ball (L-inf: clipped per value; L2: scaled down to
    norm eps when longer) and then so that ``clean + delta`` lies in [0, 255]. The second
    step only shrinks entries, so the result stays in the ball."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        length = torch.linalg.vector_norm(delta)
        delta = delta * torch.clamp(eps / torch.clamp(length, min=1e-12), max=1.0)
    return (clean + delta).clamp(0.0, PIXEL_MAX) - clean


def random_start(clean: torch.Tensor, norm: str, eps: float, generator: torch.Generator) -> torch.Tensor:
    """The random start's perturbation (projected), drawn on the CPU from ``generator`` so
    that a seed gives the same start on any device."""
    noise = torch.rand(clean.shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0
    if norm == "linf":
        noise = noise * eps
    else:
        noise = noise * (eps / torch.clamp(torch.linalg.vector_norm(noise), min=1e-12))
    return project(noise.to(clean.device), clean, norm, eps)


def _step(grad: torch.Tensor, norm: str, alpha: float) -> torch.Tensor:
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / torch.clamp(torch.linalg.vector_norm(grad), min=1e-12)


# -- the differentiable model --------------------------------------------------------
class _Forward:
    """The segmenter as a function of a (1, 3, H, W) image tensor in [0, 255]: the mask
    logits (B, H, W) of every prompt group, with autograd. Prompts and targets are turned
    into tensors once."""

    def __init__(self, seg, hw: tuple[int, int], groups: Sequence[PromptGroup], care: np.ndarray | None) -> None:
        self.seg, self.hw = seg, hw
        dev = seg.device
        self.mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
        size = np.asarray([hw], np.float64)
        self.prompts = [seg._prompts_to_tensors(size, g.point_coords, g.point_labels, None, None) for g in groups]
        self.multimask = [g.multimask for g in groups]
        self.targets = [torch.as_tensor(g.targets, device=dev) for g in groups]
        for t in self.targets:
            if tuple(t.shape[1:]) != hw:
                raise ValueError(f"targets must have the image's size {hw}, got {tuple(t.shape[1:])}")
        care_t = torch.ones(hw, dtype=torch.bool, device=dev) if care is None else torch.as_tensor(care, device=dev)
        self.care = care_t.float()
        self.n_pixels = float(hw[0] * hw[1])

    def logits(self, x255: torch.Tensor) -> list[torch.Tensor]:
        seg, size = self.seg, self.seg.image_size
        # the ops of transforms.preprocess, on a tensor that carries gradients
        x = F.interpolate(x255 / PIXEL_MAX, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        out = []
        with seg._autocast():
            embed, high = image_features(seg.model, x)
            for (coords, labels, _, _), multimask in zip(self.prompts, self.multimask):
                if seg.ruac_head is None:
                    low, iou = decode(seg.model, embed, high, coords, labels, None, None, multimask)
                else:
                    gen = None
                    if seg.uncertainty_mode == "mc":
                        gen = torch.Generator(device=seg.device).manual_seed(seg.mc_seed)
                    res = decode_bayesian(seg.model, seg.ruac_head, embed, high, coords, labels, None, None,
                                          multimask, seg.uncertainty_mode, seg.mc_samples, gen)
                    low, iou = res.logits, res.iou_pred
                low, iou = low.float(), iou.float()
                rows = torch.arange(low.shape[0], device=low.device)
                low = low[rows, iou.argmax(dim=1)][:, None]  # M = 1 without multimask
                out.append(F.interpolate(low, self.hw, mode="bilinear", align_corners=False)[:, 0])
        return out

    def losses(self, logits: list[torch.Tensor], method: str, step: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss the attack maximises, unweighted loss), each summed over rows."""
        weighted = plain = logits[0].new_zeros(())
        for z, target in zip(logits, self.targets):
            bce = F.binary_cross_entropy_with_logits(z, target.float(), reduction="none") * self.care
            w = pixel_weights(method, z, target, step, steps)
            weighted = weighted + (w * bce).sum() / self.n_pixels
            plain = plain + bce.detach().sum() / self.n_pixels
        return weighted, plain


def _image_tensor(image: np.ndarray, device) -> tuple[np.ndarray, torch.Tensor]:
    """The (H, W, 3) float32 image in [0, 1] of any image :func:`image_to_float` accepts,
    and it as a (1, 3, H, W) tensor in [0, 255]."""
    img = image_to_float(image)
    return img, torch.from_numpy(np.ascontiguousarray(img * PIXEL_MAX)).permute(2, 0, 1)[None].to(device)


def segmentation_loss(seg, image: np.ndarray, groups: Sequence[PromptGroup], care: np.ndarray | None = None) -> float:
    """The unweighted loss (summed per-pixel BCE, see the module docstring) of ``seg`` on
    ``image`` (any format :func:`image_to_float` accepts; for an adversarial image pass
    :meth:`AttackResult.as_float`)."""
    _, x = _image_tensor(image, seg.device)
    fwd = _Forward(seg, tuple(x.shape[-2:]), groups, care)
    with torch.no_grad():
        return float(fwd.losses(fwd.logits(x), "pgd", 0, 1)[1])


def run_attack(
    seg,
    image: np.ndarray,
    groups: Sequence[PromptGroup],
    attack: Attack,
    seed: int = 0,
    care: np.ndarray | None = None,
) -> AttackResult:
    """Attack ``seg`` on ``image`` with the prompts of ``groups`` fixed.

    Args:
        seg: a :class:`ppd.segmenter.Segmenter` (its RUAC head, if any, is attacked too).
        image: the clean image, any format :func:`ppd.segmenter.transforms.image_to_float`
            accepts ((H, W, 3) uint8 RGB typically).
        groups: the prompt sets and their target masks (at the image's size); their
            losses are summed, so one perturbation attacks all of them.
        attack: the attack (:func:`named_attack`).
        seed: seeds the random start.
        care: (H, W) bool pixels that count in the loss (None: all).

    Returns:
        :class:`AttackResult`; ``image`` is the last iterate, as the reference codes do.
    """
    if not groups:
        raise ValueError("run_attack needs at least one prompt group")
    # gradients even when the caller runs under torch.inference_mode (as Segmenter.encode does)
    with torch.inference_mode(False), torch.enable_grad():
        clean_float, clean = _image_tensor(image, seg.device)
        fwd = _Forward(seg, tuple(clean.shape[-2:]), groups, care)
        gen = torch.Generator().manual_seed(int(seed) % 2**63)
        if attack.random_start and attack.eps > 0:
            delta = random_start(clean, attack.norm, attack.eps, gen)
        else:
            delta = torch.zeros_like(clean)
        losses = []
        was_training = seg.model.training
        seg.model.eval()
        try:
            for t in range(attack.iterations):
                x = (clean + delta).requires_grad_(True)
                weighted, plain = fwd.losses(fwd.logits(x), attack.method, t, attack.iterations)
                (grad,) = torch.autograd.grad(weighted, x)
                losses.append(float(plain))
                step = _step(grad, attack.norm, attack.alpha)
                delta = project(delta + step, clean, attack.norm, attack.eps).detach()
            with torch.no_grad():
                losses.append(float(fwd.losses(fwd.logits(clean + delta), "pgd", 0, 1)[1]))
        finally:
            seg.model.train(was_training)
    logger.debug("%s: loss %.4g -> %.4g", attack.name, losses[0], losses[-1])
    adv = (clean + delta)[0].permute(1, 2, 0)
    return AttackResult(adv.cpu().numpy().astype(np.float32), delta[0].permute(1, 2, 0).cpu().numpy().astype(np.float32),
                        losses, clean_float)
