"""RUAC's Weibull maths: moments, reparameterised samples, the KL to a Gamma prior,
MacKay's probit, normalised binary entropy and the straight-through ReLU.

All functions take and return torch tensors (differentiable). The head
(:mod:`ppd.ruac.head`) runs them in float32 with autocast disabled: bf16 has too few bits
for ``lgamma`` differences.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EULER_GAMMA = 0.5772156649015329
LN2 = math.log(2.0)
PI_OVER_8 = math.pi / 8.0


def weibull_mean(k: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mean of Weibull(shape ``k``, scale ``lam``): ``lam * Gamma(1 + 1/k)``.

    Args:
        k: shape > 0 (broadcastable with ``lam``).
        lam: scale >= 0.
    """
    return lam * torch.exp(torch.lgamma(1.0 + 1.0 / k))


def weibull_var(k: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Variance of Weibull(``k``, ``lam``): ``lam^2 [Gamma(1 + 2/k) - Gamma(1 + 1/k)^2]``.

    Computed as ``mean^2 * cv2`` with the squared coefficient of variation
    ``cv2 = Gamma(1 + 2/k) / Gamma(1 + 1/k)^2 - 1 = expm1(lg2 - 2 lg1)``, ``lg_i =
    lgamma(1 + i/k)``: no difference of two large Gammas (small k) and no cancellation
    (large k, where the bracket is a small difference of numbers near 1).
    """
    return weibull_mean(k, lam).square() * _weibull_cv2(k)


def _weibull_cv2(k: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation Var/mean^2 of a Weibull with shape k (scale-free).

    ``lg2 - 2 lg1 >= 0`` by log-convexity of Gamma; the clamp only removes rounding.
    """
    x = torch.lgamma(1.0 + 2.0 / k) - 2.0 * torch.lgamma(1.0 + 1.0 / k)
    return torch.expm1(x.clamp_min(0.0))


def weibull_sample(
    k: torch.Tensor, lam: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """One reparameterised sample ``lam * (-log(1 - u))^(1/k)``, ``u ~ U(eps, 1 - eps)``.

    Gradients flow to ``k`` and ``lam``. ``u`` is clipped away from 0 and 1 so that the
    sample is finite and its gradient w.r.t. ``k`` (through ``log(-log(1 - u))``) too.

    Args:
        k, lam: broadcastable shape and scale tensors; the sample has their broadcast shape.
        generator: optional ``torch.Generator`` on the tensors' device (reproducible draws).
    """
    shape = torch.broadcast_shapes(k.shape, lam.shape)
    u = torch.rand(shape, generator=generator, device=lam.device, dtype=lam.dtype)
    u = u.clamp(eps, 1.0 - eps)
    log_e = torch.log(-torch.log1p(-u))  # log of an Exp(1) draw
    return lam * torch.exp(log_e / k)


def kl_weibull_gamma(
    k: torch.Tensor, lam: torch.Tensor, alpha: float | torch.Tensor, beta: float | torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(Weibull(k, lam) || Gamma(alpha, beta)), ``beta`` a *rate*.

    ``gamma_e alpha / k - alpha log lam + log k + beta lam Gamma(1 + 1/k) - gamma_e - 1
    - alpha log beta + lgamma(alpha)`` (closed form, Zhang et al. 2018; docs/ruac.md).
    ``lam`` is clamped to >= 1e-10 inside the log (zero evidence would give +inf).
    """
    alpha = torch.as_tensor(alpha, dtype=lam.dtype, device=lam.device)
    beta = torch.as_tensor(beta, dtype=lam.dtype, device=lam.device)
    return (
        EULER_GAMMA * alpha / k
        - alpha * torch.log(lam.clamp_min(1e-10))
        + torch.log(k)
        + beta * weibull_mean(k, lam)
        - EULER_GAMMA
        - 1.0
        - alpha * torch.log(beta)
        + torch.lgamma(alpha)
    )


def mackay_probit(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """MacKay's approximation of ``E[sigmoid(x)]``, ``x ~ N(mu, var)``:
    ``sigmoid(mu / sqrt(1 + pi/8 var))``. Negative ``var`` (rounding) counts as 0."""
    return torch.sigmoid(_mackay_logit(mu, var))


def _mackay_logit(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return mu * torch.rsqrt(1.0 + PI_OVER_8 * var.clamp_min(0.0))


def binary_entropy(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Binary entropy of a probability divided by ln 2: in [0, 1], 1 at p = 0.5.

    ``p`` is clipped to [eps, 1 - eps] so that the gradient stays finite at 0 and 1.
    """
    p = p.clamp(eps, 1.0 - eps)
    h = (torch.special.entr(p) + torch.special.entr(1.0 - p)) / LN2
    return h.clamp(0.0, 1.0)


def _binary_entropy_from_logit(t: torch.Tensor) -> torch.Tensor:
    """``binary_entropy(sigmoid(t))`` without forming p: exact and smooth for any logit."""
    h = (torch.sigmoid(t) * F.softplus(-t) + torch.sigmoid(-t) * F.softplus(t)) / LN2
    return h.clamp(0.0, 1.0)


class _SteReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clamp_min(0.0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad


def ste_relu(x: torch.Tensor) -> torch.Tensor:
    """Straight-through ReLU: ``max(x, 0)`` forward, identity gradient backward.

    Exact zeros ("no evidence") in the forward pass without dead units (App. A.5).
    """
    return _SteReLU.apply(x)


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))
