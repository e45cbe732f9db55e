"""One ``ppd train-ruac`` step: the RUAC head and its two attackers, their optimiser,
the prompts, the clean and adversarial losses (:class:`RuacTrainer`).

One step (``batch_size`` images, ``objects_per_image`` objects each, seeded):

1. prompts as in ``ppd pretrain`` (``prompt_mode="mixed"``: one click with multimask
   output, several random clicks, or a box; then ``rounds - 1`` corrective clicks from the
   head's own mean prediction) or RUAC's protocol (``"protocol"``: a random GT pixel,
   then error-region clicks, :func:`ppd.ruac.evaluation.protocol_click`);
2. clean branch: every round is decoded by the head; loss = ``focal_weight`` x focal +
   ``dice_weight`` x dice at the decoder's low resolution (multimask rows: the best of
   the three masks, as SAM), mean over rows and rounds. Curriculum phase 1 (the paper's
   "standard SAM segmentation loss") scores the analytic mean logits (``phase1_mean``);
   from phase 2 on the head runs in ``"sample"`` mode (one Weibull draw, the
   reparameterised path), the loss scores the sampled logits and the head's KL term is
   added. The head's mean path (initialised from SAM2's decoder) learns at
   ``lr_head_mean``, far below its new Weibull-shape networks (``lr_head``), as RUAC
   fine-tunes the pretrained decoder far slower than its new parts;
3. adversarial branch (phase 3 of the curriculum, skipped with ``aue=False``): the style
   attacker restyles every object of each image (AdaIN, GCN-coordinated) and the
   deformation attacker warps image and masks with one field; the attacked image is
   re-encoded by the frozen encoder WITH autograd enabled (w.r.t. its input only: the
   encoder's parameters stay frozen), so the attackers receive the gradient of the loss
   through the encoder and the decoder, reversed by their gradient reversal layers; the
   final round's prompts are decoded on it and scored with segmentation + KL + the
   calibration loss with its two stop-gradients (``ppd.ruac.losses.calibration_loss``:
   prob = sigmoid(sampled logit), ``u_s`` = entropy of the sample, ``u_a`` = the analytic
   uncertainty);
4. total = ``seg * L_seg + kl * KL + adv * (L_seg_adv + kl * KL_adv + cal * L_cal)`` with
   the weights of :class:`~ppd.ruac.losses.CurriculumSchedule` (phases at 5/20 and 7/20 of
   the steps, as the authors' 20 epochs); ONE backward pass updates the head (downhill)
   and the attackers (uphill, through the GRL); AdamW with separate learning rates, linear
   warm-up and cosine decay.

Cost of the adversarial branch, measured on the bundled model with the default config
(process CPU time, 1 thread): re-encoding the 4 attacked images with input gradients
(forward + backward) 0.24 s, vs 0.11 s for the forward pass alone; attackers 0.10 s; the
whole adversarial branch (forward + backward) 0.39 s, vs 0.20 s for the clean branch (3
rounds, 14 rows) and 0.16 s for the prompts; a phase-3 step takes ~1.0 s, a clean step
0.3-0.45 s. Attacking the cached *features* instead would skip the encoder but is not
RUAC (its attackers act in image space, Sec. 3.3 and App. B), so the encoder runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ppd.pretrain_data import _error_click, _initial_prompt, _pad, hard_iou
from ppd.ruac.adversaries import DeformationAttacker, StyleAttacker
from ppd.ruac.evaluation import MIN_CLICK_SEPARATION, first_click, protocol_click
from ppd.ruac.head import BayesianMaskDecoder, RuacDecoderOutput, RuacHeadConfig
from ppd.ruac.losses import calibration_loss, dice_loss, focal_loss
from ppd.ruac.scene_pool import RuacBatch, _resize_masks
from ppd.ruac.train_config import RuacTrainConfig
from ppd.segmenter import image_features
from ppd.torch_files import generator_from_state, generator_state


@dataclass
class _Round:
    coords: torch.Tensor  # (R, K, 2) model-input pixels
    labels: torch.Tensor  # (R, K) int: 1, 0, 2/3 (box corners), -1 padding
    multi: torch.Tensor  # (R,) bool: multimask output (round 0 single clicks only)


class RuacTrainer:
    """The trainable parts (head + attackers), their optimiser and one training step.

    Args:
        cfg: the run configuration.
        model: a SAM2 model; it is frozen here (``requires_grad_(False)``, eval mode).
        device: where everything runs.

    Attributes:
        head: the :class:`BayesianMaskDecoder` on ``model.sam_mask_decoder``.
        style, deform: the attackers.
        opt: AdamW with the groups ``head_mean`` (``lr_head_mean``), ``head_shape``
            (``lr_head``) and ``attackers`` (``lr_attackers``).
        rng: numpy generator of the prompts; gen: torch generator of the Weibull draws.
    """

    def __init__(self, cfg: RuacTrainConfig, model: torch.nn.Module, device: torch.device) -> None:
        self.cfg, self.model, self.device = cfg, model, device
        model.requires_grad_(False)
        model.eval()
        torch.manual_seed(cfg.seed)
        self.head = BayesianMaskDecoder(model.sam_mask_decoder, RuacHeadConfig(**cfg.head)).to(device)
        c = int(model.sam_mask_decoder.transformer_dim)
        self.style = StyleAttacker(feature_dim=c, eps=cfg.style_eps, r=cfg.style_r, use_gcn=cfg.style_gcn,
                                   grl_scale=cfg.grl_scale).to(device)
        self.deform = DeformationAttacker(feature_dim=c, max_displacement=cfg.deform_max_displacement,
                                          grl_scale=cfg.grl_scale).to(device)
        mean_p, shape_p = self.head_parameter_groups()
        self.peak_lr = {"head_mean": cfg.lr_head_mean, "head_shape": cfg.lr_head, "attackers": cfg.lr_attackers}
        self.opt = torch.optim.AdamW(
            [
                {"params": mean_p, "lr": cfg.lr_head_mean, "name": "head_mean"},
                {"params": shape_p, "lr": cfg.lr_head, "name": "head_shape"},
                {"params": self.attacker_parameters(), "lr": cfg.lr_attackers, "name": "attackers"},
            ],
            weight_decay=cfg.weight_decay,
        )
        self.rng = np.random.default_rng([cfg.seed, 11])
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.size = int(model.image_size)
        self.pe = None
        self.train_mode()

    def head_parameter_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """``(mean path, shape networks)``: the head's parameters initialised from SAM2's
        decoder (evidence conv, per-token weight MLPs) and its new Weibull-shape ones."""
        mean_p, shape_p = [], []
        for n, p in self.head.named_parameters():
            if n.startswith("base."):
                continue
            (mean_p if n.startswith(("evidence.", "token_mean.")) else shape_p).append(p)
        return mean_p, shape_p

    def attacker_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.style.parameters(), *self.deform.parameters()]

    def train_mode(self) -> None:
        """Head and attackers in training mode; the wrapped SAM2 decoder stays in eval."""
        self.head.train()
        self.head.base.eval()
        self.style.train()
        self.deform.train()

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "head": self.head.head_state_dict(),
            "style": self.style.state_dict(),
            "deform": self.deform.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": generator_state(self.rng),  # plain ints: resume files load with weights_only=True
            "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"], strict=False)
        self.style.load_state_dict(state["style"])
        self.deform.load_state_dict(state["deform"])
        self.opt.load_state_dict(state["opt"])
        self.rng = generator_from_state(state["rng"])
        self.gen.set_state(state["gen"])

    # -- decoding ---------------------------------------------------------------------
    def decode(
        self, embed: torch.Tensor, high: list[torch.Tensor], coords: torch.Tensor, labels: torch.Tensor,
        multimask: bool, mode: str, compute_kl: bool = False,
    ) -> RuacDecoderOutput:
        """Prompt encoder + head on one embedding per row."""
        sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return self.head(
            image_embeddings=embed, image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            repeat_image=False, high_res_features=high, mode=mode, generator=self.gen, compute_kl=compute_kl,
        )

    def _row_losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, M, h, w) logits vs (B, h, w) targets -> (B, M) per-mask losses."""
        b, m = logits.shape[:2]
        lg = logits.flatten(0, 1)
        tg = target[:, None].expand_as(logits).flatten(0, 1)
        cfg = self.cfg
        per = cfg.focal_weight * focal_loss(lg, tg, cfg.focal_alpha, cfg.focal_gamma) + cfg.dice_weight * dice_loss(lg, tg)
        return per.view(b, m)

    @torch.no_grad()
    def _mean_masks(self, batch: RuacBatch, rnd: _Round) -> np.ndarray:
        """(R, Ss, Ss) bool masks of the head's analytic mean (multimask rows: best
        predicted IoU), the prediction a user would correct."""
        r = len(rnd.multi)
        low = torch.empty(r, 1, self.size // 4, self.size // 4, device=self.device)
        for mm in (True, False):
            idx = (rnd.multi == mm).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            own = batch.owner[idx]
            out = self.decode(batch.embed[own], [h[own] for h in batch.high], rnd.coords[idx], rnd.labels[idx], mm, "analytic")
            best = out.iou_pred.argmax(1)
            low[idx] = out.logits[torch.arange(len(idx), device=self.device), best][:, None]
        ss = batch.gt.shape[-1]
        return (F.interpolate(low, size=(ss, ss), mode="bilinear", align_corners=False)[:, 0] > 0).cpu().numpy()

    def make_prompts(self, batch: RuacBatch) -> list[_Round]:
        """The ``cfg.rounds`` prompt sets of every row (module docstring, step 1)."""
        cfg, rng = self.cfg, self.rng
        scale = self.size / batch.gt.shape[-1]
        if cfg.prompt_mode == "mixed":
            init = [_initial_prompt(m, rng, cfg) for m in batch.gt]
            points = [p for p, _, _ in init]
            labels = [np.asarray(l) for _, l, _ in init]
            multi = torch.tensor([bool(mm) for _, _, mm in init], device=self.device)
        else:
            points = [first_click(m, rng)[None] for m in batch.gt]
            labels = [np.ones(1, np.int64) for _ in batch.gt]
            multi = torch.ones(len(points), dtype=torch.bool, device=self.device)
        rounds = []
        for r in range(cfg.rounds):
            coords, labs = _pad(points, labels)
            rnd = _Round(
                (coords * scale).to(self.device), labs.to(self.device),
                multi if r == 0 else torch.zeros_like(multi),
            )
            rounds.append(rnd)
            if r + 1 == cfg.rounds:
                break
            pred = self._mean_masks(batch, rnd)
            for i in range(len(points)):
                if cfg.prompt_mode == "mixed":
                    c = _error_click(pred[i], batch.gt[i], rng, cfg.p_rule_click)
                else:
                    c = protocol_click(pred[i], batch.gt[i], points[i], MIN_CLICK_SEPARATION)
                if c is not None:
                    points[i] = np.concatenate([points[i], c[0][None]]).astype(np.float32)
                    labels[i] = np.concatenate([labels[i], [c[1]]])
        return rounds

    # -- losses -------------------------------------------------------------------------
    def clean_losses(
        self, batch: RuacBatch, rounds: list[_Round], with_kl: bool, mode: str = "sample"
    ) -> dict[str, torch.Tensor]:
        """Segmentation loss on sampled (``mode="sample"``) or mean (``"analytic"``) logits
        and the KL, mean over rows and rounds."""
        seg_sum = torch.zeros((), device=self.device)
        unc_sum = torch.zeros((), device=self.device)
        kl_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device)
        r_total = 0
        for rnd in rounds:
            for mm in (True, False):
                idx = (rnd.multi == mm).nonzero()[:, 0]
                if len(idx) == 0:
                    continue
                own = batch.owner[idx]
                out = self.decode(batch.embed[own], [h[own] for h in batch.high], rnd.coords[idx], rnd.labels[idx],
                                  mm, mode, with_kl)
                tgt = batch.target[idx]
                per = self._row_losses(out.logits, tgt)
                best = per.detach().argmin(1)
                rows = torch.arange(len(idx), device=self.device)
                seg_sum = seg_sum + per[rows, best].sum()
                kl_sum = kl_sum + out.kl * len(idx)
                with torch.no_grad():
                    hits = hits + hard_iou(out.logits[rows, best], tgt).sum()
                    unc_sum = unc_sum + out.uncertainty[rows, best].mean((1, 2)).sum()
            r_total += len(rnd.multi)
        return {"seg": seg_sum / r_total, "kl": kl_sum / r_total, "iou_sample": hits / r_total, "unc": unc_sum / r_total}

    def adversarial_losses(
        self, batch: RuacBatch, rnd: _Round, with_kl: bool, keep_outputs: bool = False
    ) -> dict[str, Any]:
        """Attack the batch's images, re-encode them, decode ``rnd`` on them.

        Returns:
            ``seg``, ``kl``, ``cal`` (0-d tensors) and detached diagnostics; with
            ``keep_outputs`` also ``out`` (:class:`RuacDecoderOutput`), ``target`` and
            ``attacked`` (the attacked images), for tests.
        """
        xs, sdiag = self.style(batch.x, batch.image_masks, batch.embed)
        xa, warped, ddiag = self.deform(xs, batch.image_masks, batch.embed)
        # Frozen encoder, autograd on: the gradient reaches the attacked image (and the
        # attackers behind it), never the encoder's parameters (requires_grad off).
        embed_a, high_a = image_features(self.model, xa)
        own = batch.owner
        tgt_full = torch.stack([warped[int(o)][int(j)] for o, j in zip(own, batch.obj)])
        target = _resize_masks(tgt_full.float(), self.size // 4, "area")
        out = self.decode(embed_a[own], [h[own] for h in high_a], rnd.coords, rnd.labels, False, "sample", with_kl)
        logits = out.logits[:, 0]
        seg = self._row_losses(out.logits, target)[:, 0].mean()
        cal = calibration_loss(torch.sigmoid(logits), target, out.sampled_entropy[:, 0], out.uncertainty[:, 0])
        res: dict[str, Any] = {"seg": seg, "kl": out.kl, "cal": cal}
        with torch.no_grad():
            res["iou_sample_adv"] = hard_iou(logits, target).mean()
            res["unc_adv"] = out.uncertainty.mean()
            res["style_shift"] = sdiag["mean_abs_shift"]
            res["style_scale"] = sdiag["mean_abs_scale_delta"]
            res["deform_px"] = ddiag["mean_displacement_px"]
            res["image_delta"] = (xa - batch.x).abs().mean()
        if keep_outputs:
            res.update(out=out, target=target, attacked=xa)
        return res

    def losses(self, batch: RuacBatch, rounds: list[_Round], step: int) -> dict[str, Any]:
        """All loss terms of a step and their weighted total (module docstring, step 4)."""
        w = self.cfg.weights(step)
        mode = "analytic" if self.cfg.phase1_mean and self.cfg.phase(step) == 1 else "sample"
        clean = self.clean_losses(batch, rounds, with_kl=w["kl"] > 0, mode=mode)
        total = w["seg"] * clean["seg"] + w["kl"] * clean["kl"]
        parts: dict[str, Any] = dict(clean)
        if w["adv"] > 0:
            sub, rows = batch.subset(self.cfg.adv_images)
            last = rounds[-1]
            rnd = _Round(last.coords[rows], last.labels[rows], last.multi[rows])
            adv = self.adversarial_losses(sub, rnd, with_kl=w["kl"] > 0)
            total = total + w["adv"] * (adv["seg"] + w["kl"] * adv["kl"] + w["cal"] * adv["cal"])
            parts.update({"seg_adv" if k == "seg" else "kl_adv" if k == "kl" else k: v for k, v in adv.items()})
        parts["total"] = total
        parts["weights"] = w
        return parts

    def step(self, batch: RuacBatch, step: int) -> dict[str, float]:
        """One optimiser step at 0-based ``step``; returns scalar statistics."""
        cfg = self.cfg
        f = cfg.lr_factor(step)
        for g in self.opt.param_groups:
            g["lr"] = self.peak_lr[g["name"]] * f
        rounds = self.make_prompts(batch)
        parts = self.losses(batch, rounds, step)
        self.opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        gh = torch.nn.utils.clip_grad_norm_(self.head.head_parameters(), cfg.grad_clip)
        stats = {"grad_norm_head": float(gh)}
        if parts["weights"]["adv"] > 0:
            ga = torch.nn.utils.clip_grad_norm_(self.attacker_parameters(), cfg.grad_clip)
            stats["grad_norm_attackers"] = float(ga)
        self.opt.step()
        for k, v in parts.items():
            if isinstance(v, torch.Tensor):
                stats[k] = float(v.detach())
        stats["phase"] = float(cfg.phase(step))
        stats["lr_head"] = self.peak_lr["head_shape"] * f
        return stats
