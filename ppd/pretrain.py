"""``ppd pretrain``: train the bundled ``sam2-tiny-synthetic`` model from scratch.

A SAM-style interactive recipe on procedural scenes (:mod:`ppd.data.scenes`):

* each step encodes a batch of images once and decodes ``rounds`` prompt rounds on it;
* round 0: a single positive click (multimask output, loss on the best of the three
  masks, as SAM), 1..``max_clicks`` random positive/negative clicks, or a box;
* later rounds add a corrective click from the previous prediction's error (the
  SAM/RITM rule some of the time, a random point of the larger error region otherwise);
* loss = ``focal_weight`` * focal + ``dice_weight`` * dice + ``iou_weight`` * MSE of
  the predicted IoU, summed over rounds, plus ``instance_weight`` * an auxiliary dense
  instance-discrimination loss on the image features (:func:`instance_loss`). Without
  it the model trained from scratch learned to ignore the click: the same mask for every
  click on an image (logits changed by 0.5% between two clicks, the clicked object
  picked as often as chance). With it, and the prompt path at ``decoder_lr_scale`` x
  the learning rate, held-out 1-click mIoU at step 1200 went from ~0.2 to 0.72;
* AdamW (prompt encoder and mask decoder at ``decoder_lr_scale`` x ``lr``), linear
  warm-up then cosine decay; scenes come from a pool that is refreshed
  with new scenes every step (drawing a scene costs ~25 ms, a step ~0.8 s at 2 threads);
* optionally a curriculum: the first ``curriculum_steps`` draw a falling share of their
  images from the ``simple`` generator (flat, untextured, well-contrasted objects). It
  helps early (after 600 steps, 1-click mIoU on 24 held-out training-domain scenes 0.189
  with simple scenes only, 0.154 without) but not later (a 4800-step run with a 1500-step
  curriculum scored 0.209 at step 2400, the previous recipe, without the instance loss, 0.231 at step 2000), so it is
  off by default.

Everything is seeded; a run folder holds ``config.json``, ``last.pt`` (resumable),
``model.pt`` (the shippable fp16 checkpoint) and ``metrics.json``. The options are
:class:`~ppd.pretrain_config.PretrainConfig`; scenes, prompts and losses are in
:mod:`ppd.pretrain_data`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ppd import io
from ppd.data.scenes import DOMAINS, ProceduralScenes
from ppd.metrics import iou as iou_metric
from ppd.models import BUNDLED_NAME, new_tiny_model
from ppd.pretrain_config import PretrainConfig, lr_at, resolve_device, simple_share
from ppd.pretrain_data import (
    ScenePool,
    _error_click,
    _initial_prompt,
    _pad,
    hard_iou,
    instance_loss,
    instance_onehot,
    model_input,
)
from ppd.prompts import corrective_click, farthest_click
from ppd.ruac.losses import dice_loss, focal_loss
from ppd.segmenter import Segmenter, image_features
from ppd.torch_files import generator_from_state, generator_state, load_resume

logger = logging.getLogger(__name__)

# Held-out evaluation scenes use seeds far from any training seed.
EVAL_SEED = 10_000_000


def train_step(
    model,
    opt,
    imgs: np.ndarray,
    masks: np.ndarray,
    owner: np.ndarray,
    cfg: PretrainConfig,
    rng: np.random.Generator,
    inst: np.ndarray | None = None,
) -> dict:
    """One optimiser step: encode the images once, decode ``cfg.rounds`` prompt rounds
    for every mask row (row r lies on image ``owner[r]``). ``inst`` (N, S, S) instance
    ids feed the auxiliary instance loss when ``cfg.instance_weight`` > 0."""
    S = model.image_size
    dev = next(model.parameters()).device
    x = model_input(imgs, S, dev)
    target = torch.from_numpy(masks).float().to(dev)
    if cfg.loss_size and cfg.loss_size != target.shape[-1]:
        target = F.interpolate(target[:, None], size=(cfg.loss_size, cfg.loss_size), mode="area")[:, 0]
    scale = S / masks.shape[-1]
    embed, high = image_features(model, x)
    total = torch.zeros((), device=dev)
    stats = {}
    if cfg.instance_weight and inst is not None:
        onehot = instance_onehot(torch.from_numpy(inst).to(dev))  # once for both feature maps
        aux = sum(instance_loss(f, onehot, cfg.instance_temperature) for f in (embed, high[1]))
        total = total + cfg.instance_weight * aux
        stats["instance_loss"] = float(aux.detach())
    idx = torch.from_numpy(owner).long().to(dev)
    embed, high = embed[idx], [h[idx] for h in high]
    dec = model.sam_mask_decoder
    pe = model.sam_prompt_encoder.get_dense_pe()

    prompts = [_initial_prompt(m, rng, cfg) for m in masks]
    points = [p for p, _, _ in prompts]
    labels = [l for _, l, _ in prompts]
    multi = torch.tensor([mm for _, _, mm in prompts], device=dev)
    for r in range(cfg.rounds):
        P, L = (t.to(dev) for t in _pad(points, labels))
        sparse, dense = model.sam_prompt_encoder(points=(P * scale, L), boxes=None, masks=None)
        # predict_masks returns all four masks: index 0 single-mask, 1..3 multimask
        logits, iou_pred, _, _ = dec.predict_masks(embed, pe, sparse, dense, repeat_image=False, high_res_features=high)
        up = logits
        if up.shape[-1] != target.shape[-1]:
            up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        B = up.shape[0]
        tgt = target[:, None].expand_as(up)
        per = cfg.focal_weight * focal_loss(up.flatten(0, 1), tgt.flatten(0, 1), cfg.focal_alpha, cfg.focal_gamma) + cfg.dice_weight * dice_loss(
            up.flatten(0, 1), tgt.flatten(0, 1)
        )
        per = per.view(B, 4)
        true_iou = hard_iou(up.flatten(0, 1).detach(), tgt.flatten(0, 1)).view(B, 4)
        use_multi = multi if r == 0 else torch.zeros(B, dtype=torch.bool, device=dev)
        best = per[:, 1:].detach().argmin(1) + 1
        idx = torch.where(use_multi, best, torch.zeros_like(best))
        rows = torch.arange(B, device=dev)
        mask_loss = per[rows, idx]
        # IoU head: supervise all three multimask outputs on multimask rows, mask 0 otherwise
        iou_err = (iou_pred - true_iou) ** 2
        iou_loss = torch.where(use_multi, iou_err[:, 1:].mean(1), iou_err[:, 0])
        total = total + (mask_loss + cfg.iou_weight * iou_loss).mean()
        stats[f"iou_r{r}"] = float(true_iou[rows, idx].mean())
        if r + 1 < cfg.rounds:
            with torch.no_grad():
                chosen = logits[rows, idx][:, None]
                pred = (F.interpolate(chosen, size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0).cpu().numpy()
            for i in range(B):
                c = _error_click(pred[i], masks[i], rng, cfg.p_rule_click)
                if c is not None:
                    points[i] = np.concatenate([points[i], c[0][None]])
                    labels[i] = np.concatenate([labels[i], [c[1]]])
    opt.zero_grad(set_to_none=True)
    total.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    stats["loss"] = float(total.detach())
    stats["grad_norm"] = float(gn)
    return stats


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """Image encoder, prompt encoder, mask decoder and ``no_mem_embed`` (the image path)."""
    return [p for g in parameter_groups(model) for p in g["params"]]


def parameter_groups(model, decoder_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser groups: the image path (encoder, ``no_mem_embed``) and the prompt path
    (prompt encoder, mask decoder), whose learning rate is ``lr_scale`` times the base."""
    return [
        {"params": [*model.image_encoder.parameters(), model.no_mem_embed], "lr_scale": 1.0},
        {
            "params": [*model.sam_prompt_encoder.parameters(), *model.sam_mask_decoder.parameters()],
            "lr_scale": decoder_lr_scale,
        },
    ]


def export_checkpoint(model, cfg: PretrainConfig, path: Path, meta: dict) -> Path:
    """The shippable checkpoint: ``{"model": fp16 state_dict, "config", "meta"}``."""
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    return io.save_torch({"model": state, "config": cfg.model, "meta": meta}, path)


def evaluate_clicks(seg: Segmenter, scenes, n_clicks: int = 3, max_objects: int = 3) -> dict:
    """Interactive evaluation: farthest-from-boundary first click (multimask, best
    predicted IoU), then corrective clicks by the SAM/RITM rule.

    Returns ``{"miou@1": .., ..., "miou@n": .., "objects": N}`` over the first
    ``max_objects`` objects of each scene.
    """
    ious = [[] for _ in range(n_clicks)]
    for scene in scenes:
        emb = seg.encode(scene.image)
        for gt in scene.masks[:max_objects]:
            ps = farthest_click(gt)
            pts, lab = ps.point_coords, ps.point_labels
            for k in range(n_clicks):
                pred = seg.predict(emb, pts, lab, multimask=(k == 0)).masks[0]
                ious[k].append(float(iou_metric(pred, gt)))
                c = corrective_click(pred, gt)
                if c is None:  # perfect: the remaining rounds keep the same score
                    for kk in range(k + 1, n_clicks):
                        ious[kk].append(ious[k][-1])
                    break
                pts = np.concatenate([pts, c[0][None]]).astype(np.float32)
                lab = np.concatenate([lab, [c[1]]])
    out = {f"miou@{k + 1}": float(np.mean(v)) for k, v in enumerate(ious)}
    out["objects"] = len(ious[0])
    return out


def pretrain(
    cfg: PretrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: Callable[[str, int, int, dict], None] | None = None,
) -> dict:
    """Train the tiny model; returns the final metrics. See the module docstring."""
    if cfg.domain not in DOMAINS:
        raise ValueError(f"unknown domain {cfg.domain!r}; known: {', '.join(DOMAINS)}")
    device = resolve_device(cfg.device)  # a bad device fails before anything is written
    out = Path(out)
    if resume and not (out / "last.pt").is_file():
        raise FileNotFoundError(f"--resume: {out / 'last.pt'} not found, nothing to continue "
                                "(start a new run without --resume)")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    io.save_json(cfg.to_dict(), out / "config.json")
    rng = np.random.default_rng(cfg.seed)
    model = new_tiny_model(cfg.model, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(parameter_groups(model, cfg.decoder_lr_scale), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history, elapsed = 0, [], 0.0
    last = out / "last.pt"
    pool_state = None
    if resume and last.is_file():
        state = load_resume(last)  # tensors and plain data only: the generators are stored as their states
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
        rng = generator_from_state(state["rng"])
        pool_state = {**state["pool"], "rng": generator_from_state(state["pool"]["rng"])}
        logger.info("resumed from %s at step %d", last, step)
    pool = ScenePool(
        cfg,
        np.random.default_rng([cfg.seed, 1]),
        (lambda w, i, n: progress(w, i, n, {})) if progress else None,
        state=pool_state,
    )
    eval_scenes = ProceduralScenes(cfg.domain, cfg.eval_scenes, seed=EVAL_SEED, size=cfg.scene_size)
    t0 = time.time() - elapsed
    model.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
        p_simple = simple_share(step, cfg)
        imgs, masks, owner, *inst = pool.sample(cfg.batch_size, cfg.objects_per_image, p_simple, labels=cfg.instance_weight > 0)
        stats = train_step(model, opt, imgs, masks, owner, cfg, rng, inst[0] if inst else None)
        pool.refresh(simple=p_simple > 0)
        step += 1
        stats["lr"] = opt.param_groups[0]["lr"]
        stats["simple_share"] = p_simple
        if step % 50 == 0:
            history.append({"step": step, "time": time.time() - t0, **stats})
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            model.eval()
            ev = evaluate_clicks(Segmenter(model, BUNDLED_NAME, device=str(device), cache_size=0), eval_scenes)
            model.train()
            history.append({"step": step, "time": time.time() - t0, "eval": ev})
            logger.info("step %d eval %s", step, ev)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            io.save_torch(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "history": history,
                    "elapsed": time.time() - t0,
                    "rng": generator_state(rng),
                    "pool": {**pool.state_dict(), "rng": generator_state(pool.rng)},
                },
                last,
            )
            # keep a usable fp16 model next to the resumable state at every checkpoint
            export_checkpoint(model, cfg, out / "model.pt", {"steps": step, "partial": step < cfg.steps})
        if progress:  # after the checkpoint: a run killed here resumes from this step
            progress("train", step, cfg.steps, stats)
    wall = time.time() - t0
    model.eval()
    seg = Segmenter(model, BUNDLED_NAME, device=str(device), cache_size=0)
    final = evaluate_clicks(seg, eval_scenes)
    meta = {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "wall_clock_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "eval_in_domain": final,
        "seed": cfg.seed,
    }
    export_checkpoint(model, cfg, out / "model.pt", meta)
    io.save_json({"final": final, "history": history, "wall_clock_s": wall}, out / "metrics.json")
    return final
