"""RUAC's Bayesian mask head: a Weibull head on top of a SAM2 ``MaskDecoder``.

SAM2's mask decoder ends with ``logits = hyper_in @ upscaled_embedding``: one weight
vector per mask token (from the hypernetwork MLPs) times the per-pixel features of the
upscaled embedding. RUAC (see ``docs/ruac.md`` and the paper, Sec. 3.2 and
App. A) makes both factors random, non-negative and Weibull distributed:

* pixel path: evidence ``z`` (B, C, 4h, 4w) with mean ``STE-ReLU(conv1x1(e))`` where
  ``e`` is SAM2's upscaled embedding, and a per-pixel Weibull shape ``kappa`` from a small
  CNN (Conv3x3-GELU-Conv3x3-Softplus); the scale is mean-parameterised,
  ``lam = E[z] / Gamma(1 + 1/kappa)``;
* token path: each mask token gives per-channel Weibull weights for a
  foreground/background pair, ``w_fg, w_bg`` (C each), plus a bias;
* logits: ``<z, w_fg> - <z, w_bg> + bias``.

The transformer, upscaling and IoU head stay those of the wrapped decoder (it is held,
not copied; :func:`ppd.ruac.decoder.save_head` stores only the head's own parameters).

Initialisation (so that a fresh head *is* the base decoder in expectation):

* the per-token weight means come from copies of the base hypernetwork MLPs whose last
  layer is mirrored, ``u_fg = h``, ``u_bg = -h`` with ``E[w_fg] = softplus(u_fg)``,
  ``E[w_bg] = softplus(u_bg)`` (softplus with sharpness beta); since ``softplus(h) -
  softplus(-h) = h`` exactly, the expected weight difference equals SAM2's hypernetwork
  output;
* SAM2's upscaled embedding is a GELU output, so it is >= -0.17 (GELU's minimum is
  -0.16997): the evidence starts as ``conv1x1(e) = e + 0.17 >= 0`` (identity weights,
  bias :attr:`RuacHeadConfig.evidence_offset`), where the STE-ReLU is the identity, and the
  per-token bias starts at ``-0.17 * sum_c h_c`` (a linear read-out of the same MLP's last
  hidden layer), which cancels the offset.

Together: at construction the analytic-mean logits equal the wrapped decoder's logits up
to float rounding (checked in ``tests/ruac/test_ruac_decoder.py``), so training starts from
SAM2's masks and only has to learn the posterior widths. The paper instead uses one MLP
shared by all mask tokens for both means and shapes, trained from scratch; four distinct
hypernetworks cannot be copied into one shared MLP, so here only the Weibull *shapes*
come from a shared MLP and the means keep SAM2's per-token structure.

Uncertainty modes (:meth:`BayesianMaskDecoder.forward`):

* ``"analytic"``: Weibull means and variances in closed form, logit variance
  ``sum_c Var[z_c] * (Var[w_fg,c] + Var[w_bg,c])`` (the product-of-variances term, the
  paper's approximation, App. A.8; the weight variance of the logit is that of the
  difference ``w_fg - w_bg``; :attr:`RuacHeadConfig.logit_variance` = ``"full"`` gives the
  exact variance instead), MacKay's probit ``p = sigmoid(mu / sqrt(1 + pi/8 var))``,
  uncertainty = binary entropy of ``p`` / ln 2;
* ``"mc"``: T reparameterised samples of every Weibull; logits stay the analytic mean
  (the paper's choice: the mask does not depend on T); uncertainty = normalised binary
  entropy of the mean sampled probability ``mean_t sigmoid(l_t)``, i.e. the total
  predictive entropy that MacKay's formula approximates; ``logit_var`` = the samples'
  variance;
* ``"sample"`` (training): one sample; ``logits`` are the sampled logits (the
  reparameterised path for the segmentation loss), ``uncertainty`` the analytic one
  (differentiable), ``sampled_entropy`` the normalised entropy of ``sigmoid(sample)``.

All Weibull arithmetic runs in float32 with autocast disabled (bf16 has too few bits for
``lgamma`` differences), in log space where it matters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ppd.ruac.weibull import (
    _binary_entropy_from_logit,
    _inv_softplus,
    _mackay_logit,
    _weibull_cv2,
    binary_entropy,
    kl_weibull_gamma,
    ste_relu,
    weibull_sample,
)

if TYPE_CHECKING:  # sam2 is imported only through ppd.models (Hydra side effects)
    from sam2.modeling.sam.mask_decoder import MaskDecoder

logger = logging.getLogger(__name__)

#: GELU's global minimum is -0.169971 (at x = -0.7518): SAM2's upscaled embedding is >= it.
GELU_MIN = -0.16997122
MODES = ("analytic", "mc", "sample")


# --------------------------------------------------------------------------- config
@dataclass
class RuacHeadConfig:
    """Options of the Weibull head (dimensions come from the wrapped decoder)."""

    kappa_min: float = 0.5
    """Lowest Weibull shape (pixels and weights). Small shapes mean heavy tails; 0.5 keeps
    samples finite in float32 and allows the coefficient of variation (~2.2) that the
    paper's 1.5-3x full-vs-approximate variance ratio implies (its exact range did not
    survive in the text we have)."""
    kappa_max: float = 20.0
    """Highest shape: at 20 the coefficient of variation is ~0.06 (almost deterministic)."""
    kappa_init: float = 2.0
    """Initial shape everywhere (a Rayleigh distribution, coefficient of variation 0.52).
    On the bundled model a fresh head then has mean analytic uncertainty ~0.3 and one
    sample agrees with the mean mask on 85-93% of the low-res pixels; at 1 (the
    Gamma(1, rate) prior's own shape, the exponential) it is ~0.7 and 75-83%. Training moves the shapes
    through the biases of two small layers, so with Adam they move about one learning
    rate per step: pick this value rather than rely on a low learning rate to reach it."""
    kappa_hidden: int = 16
    """Hidden channels of the pixel shape CNN (Conv3x3-GELU-Conv3x3-Softplus)."""
    shape_hidden: int = 64
    """Hidden width of the shared token-shape MLP."""
    weight_sharpness: float = 4.0
    """beta of the softplus giving the weight means, ``E[w] = softplus(u, beta)``. The
    identity ``softplus(h) - softplus(-h) = h`` holds for every beta; a larger beta puts
    less Weibull mass (2 ln 2 / beta per channel at h = 0) on fg and bg weights that cancel,
    hence less sampling noise that carries no signal."""
    evidence_offset: float = -GELU_MIN
    """Bias of the evidence 1x1 conv at initialisation (see module docstring)."""
    prior_shape: float = 1.0
    """Gamma prior shape alpha (the authors' config)."""
    prior_rate: float = 3.0
    """Gamma prior rate beta (the authors' config)."""
    eps: float = 1e-6
    """Added to every Weibull mean so that scales stay > 0 under STE-ReLU zeros."""
    logit_variance: str = "product"
    """Analytic logit variance: ``"product"``, the paper's ``sum_c Var[z_c] Var[d_c]``
    (App. A.8; ``d = w_fg - w_bg``), or ``"full"``, the exact variance of the logit under
    the factorised posterior, ``sum_c Var[z_c] (Var[d_c] + E[d_c]^2) + E[z_c]^2 Var[d_c]``
    (one more matrix product). On the bundled model at initialisation the analytic
    uncertainty's Pearson correlation with 200-sample MC is ~0.92 with "product" and
    ~0.98 with "full"."""

    def __post_init__(self) -> None:
        if not 0.0 < self.kappa_min <= self.kappa_init <= self.kappa_max:
            raise ValueError(
                "need 0 < kappa_min <= kappa_init <= kappa_max; got "
                f"{self.kappa_min}, {self.kappa_init}, {self.kappa_max}"
            )
        if self.prior_shape <= 0 or self.prior_rate <= 0:
            raise ValueError("prior_shape and prior_rate must be > 0")
        if self.logit_variance not in ("product", "full"):
            raise ValueError(f'logit_variance must be "product" or "full", got {self.logit_variance!r}')
        if self.weight_sharpness <= 0:
            raise ValueError(f"weight_sharpness must be > 0, got {self.weight_sharpness}")


@dataclass
class RuacDecoderOutput:
    """Output of :meth:`BayesianMaskDecoder.forward` (M = 3 with multimask, else 1).

    Attributes:
        logits: (B, M, 4h, 4w) mask logits (analytic mean; one sample in ``"sample"`` mode).
        iou_pred: (B, M) predicted IoU from the wrapped decoder's IoU head.
        uncertainty: (B, M, 4h, 4w) in [0, 1] (analytic in ``"analytic"`` and ``"sample"``
            modes, sampled in ``"mc"``).
        logit_var: (B, M, 4h, 4w) approximate (analytic/sample) or empirical (mc) logit
            variance, or None.
        kl: scalar, ``kl_pixel + kl_weight`` (zeros when ``compute_kl=False``).
        kl_pixel: scalar, KL of the pixel evidence vs the Gamma prior, summed over channels,
            averaged over rows and pixels.
        kl_weight: scalar, KL of the output masks' fg/bg weights, summed over channels,
            averaged over rows, masks and fg/bg.
        sampled_entropy: (B, M, 4h, 4w) normalised entropy of ``sigmoid(sampled logit)``
            (``"sample"`` mode only), else None.
        token_index: (B, M) which mask token (0 = single-mask token) each output came from.
    """

    logits: torch.Tensor
    iou_pred: torch.Tensor
    uncertainty: torch.Tensor
    logit_var: torch.Tensor | None
    kl: torch.Tensor
    kl_pixel: torch.Tensor
    kl_weight: torch.Tensor
    sampled_entropy: torch.Tensor | None
    token_index: torch.Tensor


# --------------------------------------------------------------------------- modules
class _TokenMLP(nn.Module):
    """Linear layers with an activation between them (sam2's ``MLP`` without sigmoid)."""

    def __init__(self, dims: list[int], act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


def _hypernet_dims(mlp: nn.Module) -> list[int]:
    layers = list(mlp.layers)
    return [layers[0].in_features] + [l.out_features for l in layers]


class BayesianMaskDecoder(nn.Module):
    """A Weibull (BNDL) mask head on a SAM2 ``MaskDecoder``.

    Args:
        mask_decoder: the SAM2 decoder to wrap (``model.sam_mask_decoder``). It is held as
            ``self.base`` and used for the transformer, upscaling and IoU head; its
            hypernetwork MLPs only seed the head's initialisation.
        config: head options (:class:`RuacHeadConfig`); defaults if None.

    Attributes:
        feat_dim: C, channels of the upscaled embedding (transformer_dim / 8).
        num_mask_tokens: 4 in every SAM2 config (one single-mask + three multimask).
    """

    def __init__(self, mask_decoder: "MaskDecoder", config: RuacHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or RuacHeadConfig()
        self.base = mask_decoder
        hyper = mask_decoder.output_hypernetworks_mlps
        self.num_mask_tokens = int(mask_decoder.num_mask_tokens)
        self.token_dim = int(mask_decoder.transformer_dim)
        dims = _hypernet_dims(hyper[0])
        self.feat_dim = dims[-1]
        act_out = mask_decoder.output_upscaling[-1]
        if not isinstance(act_out, (nn.GELU, nn.ReLU)):
            # The exact-initialisation argument needs features >= -evidence_offset.
            logger.warning(
                "upscaled embedding ends with %s, not GELU/ReLU: a fresh head may differ "
                "from the base decoder where features < %.3f", type(act_out).__name__,
                -self.config.evidence_offset,
            )
        c, cfg = self.feat_dim, self.config

        # Pixel path: evidence projection (1x1, identity + offset) and the shape CNN.
        self.evidence = nn.Conv2d(c, c, kernel_size=1)
        self.kappa_net = nn.Sequential(
            nn.Conv2d(c, cfg.kappa_hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(cfg.kappa_hidden, 1, 3, padding=1),
        )
        # Token path: per-token mean MLPs (2C fg/bg pre-activations + 1 bias) and one
        # shared MLP for the 2C weight shapes.
        act = type(getattr(hyper[0], "act", nn.ReLU()))
        self.token_mean = nn.ModuleList(
            _TokenMLP(dims[:-1] + [2 * c + 1], act) for _ in range(self.num_mask_tokens)
        )
        self.token_shape = _TokenMLP([self.token_dim, cfg.shape_hidden, 2 * c])
        self.meta: dict[str, Any] = {}
        self._init_from_base()
        # Live where the wrapped decoder lives (the head's own tensors stay float32).
        base_param = next(mask_decoder.parameters(), None)
        if base_param is not None:
            for module in (self.evidence, self.kappa_net, self.token_mean, self.token_shape):
                module.to(base_param.device)

    # -- initialisation -----------------------------------------------------------
    @torch.no_grad()
    def _init_from_base(self) -> None:
        cfg, c = self.config, self.feat_dim
        self.evidence.weight.copy_(torch.eye(c).view(c, c, 1, 1))
        self.evidence.bias.fill_(cfg.evidence_offset)
        k0 = _inv_softplus(cfg.kappa_init - cfg.kappa_min) if cfg.kappa_init > cfg.kappa_min else -20.0
        # Small last layers: shapes start near kappa_init everywhere but still get gradients.
        for last in (self.kappa_net[-1], self.token_shape.layers[-1]):
            nn.init.normal_(last.weight, std=1e-3)
            last.bias.fill_(k0)
        for mine, theirs in zip(self.token_mean, self.base.output_hypernetworks_mlps):
            src = list(theirs.layers)
            for dst, s in zip(mine.layers[:-1], src[:-1]):
                dst.weight.copy_(s.weight)
                dst.bias.copy_(s.bias)
            w, b = src[-1].weight.float(), src[-1].bias.float()  # (C, hidden), (C,)
            off = cfg.evidence_offset
            mine.layers[-1].weight.copy_(torch.cat([w, -w, -off * w.sum(0, keepdim=True)]))
            mine.layers[-1].bias.copy_(torch.cat([b, -b, -off * b.sum(0, keepdim=True)]))

    # -- parameters owned by the head -----------------------------------------------
    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's own parameters (everything but the wrapped ``base`` decoder)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("base.")}

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the head only (for an optimizer group)."""
        return [p for n, p in self.named_parameters() if not n.startswith("base.")]

    # -- SAM2 part --------------------------------------------------------------------
    def _base_features(
        self, image_embeddings, image_pe, sparse, dense, repeat_image, high_res_features
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM2 ``MaskDecoder.predict_masks`` up to the hypernetworks.

        Returns ``(upscaled_embedding (B, C, 4h, 4w), mask_tokens (B, 4, D), iou_pred (B, 4))``.
        """
        md = self.base
        s = 0
        if md.pred_obj_scores:
            out_tokens = torch.cat([md.obj_score_token.weight, md.iou_token.weight, md.mask_tokens.weight], 0)
            s = 1
        else:
            out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
        out_tokens = out_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((out_tokens, sparse), dim=1)
        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        else:
            if image_embeddings.shape[0] != tokens.shape[0]:
                raise ValueError(
                    f"{image_embeddings.shape[0]} image embeddings for {tokens.shape[0]} prompt "
                    "rows; pass repeat_image=True to share one image"
                )
            src = image_embeddings
        src = src + dense
        if image_pe.size(0) != 1:
            raise ValueError("image_pe should have size 1 in the batch dim (from get_dense_pe())")
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = md.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1 : s + 1 + md.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        if not md.use_high_res_features:
            up = md.output_upscaling(src)
        else:
            dc1, ln1, act1, dc2, act2 = md.output_upscaling
            feat_s0, feat_s1 = high_res_features
            up = act1(ln1(dc1(src) + feat_s1))
            up = act2(dc2(up) + feat_s0)
        iou_pred = md.iou_prediction_head(iou_token_out)
        return up, mask_tokens_out, iou_pred

    # -- Weibull parameters ---------------------------------------------------------------
    def _kappa(self, raw: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return (cfg.kappa_min + F.softplus(raw)).clamp(max=cfg.kappa_max)

    def weibull_params(self, upscaled: torch.Tensor, mask_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weibull parameters of every mask token (float32).

        Args:
            upscaled: (B, C, H, W) SAM2 upscaled embedding.
            mask_tokens: (B, T, D) mask-token outputs of the transformer.

        Returns:
            dict with ``z_mean`` (B, C, H*W), ``z_k`` (B, 1, H*W), ``w_mean`` (B, T, 2, C),
            ``w_k`` (B, T, 2, C), ``bias`` (B, T), and ``hw`` = (H, W).
        """
        eps = self.config.eps
        e = upscaled.float()
        b, c, h, w = e.shape
        z_mean = ste_relu(self.evidence(e)) + eps
        z_k = self._kappa(self.kappa_net(e))
        tok = mask_tokens.float()
        mean_out = torch.stack([mlp(tok[:, i]) for i, mlp in enumerate(self.token_mean)], 1)
        w_mean = F.softplus(mean_out[..., : 2 * c], beta=self.config.weight_sharpness).view(b, -1, 2, c) + eps
        bias = mean_out[..., 2 * c]
        w_k = self._kappa(self.token_shape(tok)).view(b, -1, 2, c)
        return {
            "z_mean": z_mean.flatten(2), "z_k": z_k.flatten(2), "w_mean": w_mean,
            "w_k": w_k, "bias": bias, "hw": (h, w),
        }

    # -- selection (as MaskDecoder.forward) -------------------------------------------------
    def _select(self, mean_logits: torch.Tensor, iou: torch.Tensor, multimask_output: bool) -> torch.Tensor:
        """(B, M) token indices, following ``MaskDecoder.forward`` (and its dynamic rule)."""
        md, bsz = self.base, mean_logits.shape[0]
        dev = mean_logits.device
        if multimask_output:
            return torch.arange(1, self.num_mask_tokens, device=dev).expand(bsz, -1)
        if md.dynamic_multimask_via_stability and not self.training:
            best = 1 + iou[:, 1:].argmax(dim=-1)
            single = mean_logits[:, 0]  # (B, HW)
            delta = md.dynamic_multimask_stability_delta
            area_i = (single > delta).sum(-1).float()
            area_u = (single > -delta).sum(-1).float()
            stability = torch.where(area_u > 0, area_i / area_u, torch.ones_like(area_u))
            stable = stability >= md.dynamic_multimask_stability_thresh
            return torch.where(stable, torch.zeros_like(best), best)[:, None]
        return torch.zeros(bsz, 1, dtype=torch.long, device=dev)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
        mode: str = "analytic",
        mc_samples: int = 20,
        generator: torch.Generator | None = None,
        compute_kl: bool = True,
    ) -> RuacDecoderOutput:
        """Predict masks and pixel uncertainty (arguments as ``MaskDecoder.forward``).

        Args:
            image_embeddings: (1 or B, D, h, w) image features.
            image_pe: (1, D, h, w) positional encoding (``get_dense_pe()``).
            sparse_prompt_embeddings: (B, N, D) point/box embeddings.
            dense_prompt_embeddings: (B, D, h, w) mask-input embeddings.
            multimask_output: three masks per row (tokens 1-3) instead of one.
            repeat_image: share one image embedding across the B rows.
            high_res_features: ``[feat_s0, feat_s1]`` when the decoder uses them.
            mode: ``"analytic"``, ``"mc"`` or ``"sample"`` (see module docstring).
            mc_samples: T for ``"mc"``.
            generator: random source for ``"mc"`` / ``"sample"`` (reproducible draws).
            compute_kl: False skips the KL terms (returned as zeros): inference does not
                need them and they cost about as much as the analytic variance.

        Returns:
            :class:`RuacDecoderOutput`.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "mc" and mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        up, mask_tokens, iou_all = self._base_features(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
            repeat_image, high_res_features,
        )
        with torch.autocast(device_type=up.device.type, enabled=False):
            return self._weibull_forward(
                up, mask_tokens, iou_all.float(), multimask_output, mode, mc_samples, generator, compute_kl
            )

    def _weibull_forward(self, up, mask_tokens, iou_all, multimask_output, mode, mc_samples, generator, compute_kl):
        cfg = self.config
        p = self.weibull_params(up, mask_tokens)
        h, w = p["hw"]
        z_mean, z_k = p["z_mean"], p["z_k"]  # (B, C, HW), (B, 1, HW)
        d_mean = p["w_mean"][:, :, 0] - p["w_mean"][:, :, 1]  # (B, T, C)
        mean_all = d_mean @ z_mean + p["bias"][..., None]  # (B, T, HW)

        sel = self._select(mean_all.detach(), iou_all, multimask_output)  # (B, M)
        rows = torch.arange(sel.shape[0], device=sel.device)[:, None]
        mu, iou = mean_all[rows, sel], iou_all[rows, sel]
        w_mean, w_k, bias = p["w_mean"][rows, sel], p["w_k"][rows, sel], p["bias"][rows, sel]

        # Mean parameterisation: lam = mean / Gamma(1 + 1/k) (lgamma on the shapes only).
        z_lam = lambda: z_mean * torch.exp(-torch.lgamma(1.0 + 1.0 / z_k))  # noqa: E731
        w_lam = lambda: w_mean * torch.exp(-torch.lgamma(1.0 + 1.0 / w_k))  # noqa: E731
        if compute_kl:
            kl_pixel = kl_weibull_gamma(z_k, z_lam(), cfg.prior_shape, cfg.prior_rate).sum(1).mean()
            kl_weight = kl_weibull_gamma(w_k, w_lam(), cfg.prior_shape, cfg.prior_rate).sum(-1).mean()
        else:
            kl_pixel = kl_weight = mu.new_zeros(())

        def analytic_var() -> torch.Tensor:
            var_d = (w_mean.square() * _weibull_cv2(w_k)).sum(2)  # (B, M, C): Var[w_fg - w_bg]
            var_z = z_mean.square() * _weibull_cv2(z_k)  # (B, C, HW)
            if cfg.logit_variance == "product":
                return var_d @ var_z  # (B, M, HW)
            d = w_mean[:, :, 0] - w_mean[:, :, 1]
            return (var_d + d.square()) @ var_z + var_d @ z_mean.square()

        sampled_entropy = None
        if mode == "analytic":
            logits, var = mu, analytic_var()
            unc = _binary_entropy_from_logit(_mackay_logit(mu, var))
        elif mode == "sample":
            logits = self._sample_logits(z_k, z_lam(), w_k, w_lam(), bias, generator)
            var = analytic_var()
            unc = _binary_entropy_from_logit(_mackay_logit(mu, var))
            sampled_entropy = _binary_entropy_from_logit(logits)
        else:  # mc: T draws, running sums only (memory independent of T)
            p_sum = torch.zeros_like(mu)
            l_sum = torch.zeros_like(mu)
            l_sq = torch.zeros_like(mu)
            zl, wl = z_lam(), w_lam()
            for _ in range(mc_samples):
                l_t = self._sample_logits(z_k, zl, w_k, wl, bias, generator)
                p_sum += torch.sigmoid(l_t)
                l_sum += l_t
                l_sq += l_t.square()
            t = float(mc_samples)
            logits = mu
            var = (l_sq / t - (l_sum / t).square()).clamp_min(0.0)
            unc = binary_entropy(p_sum / t)

        shape = (*sel.shape, h, w)
        return RuacDecoderOutput(
            logits=logits.reshape(shape),
            iou_pred=iou,
            uncertainty=unc.reshape(shape),
            logit_var=var.reshape(shape),
            kl=kl_pixel + kl_weight,
            kl_pixel=kl_pixel,
            kl_weight=kl_weight,
            sampled_entropy=None if sampled_entropy is None else sampled_entropy.reshape(shape),
            token_index=sel,
        )

    def _sample_logits(self, z_k, z_lam, w_k, w_lam, bias, generator) -> torch.Tensor:
        """One joint draw of pixel evidence and fg/bg weights -> (B, M, HW) logits."""
        z = weibull_sample(z_k, z_lam, generator)  # (B, C, HW)
        wts = weibull_sample(w_k, w_lam, generator)  # (B, M, 2, C)
        return (wts[:, :, 0] - wts[:, :, 1]) @ z + bias[..., None]
