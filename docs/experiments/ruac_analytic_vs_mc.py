"""Is a RUAC head's analytic uncertainty a faithful and cheaper stand-in for its Monte-Carlo
uncertainty: how well do their pixel maps agree, and what does each cost per decoder call?

    python docs/experiments/ruac_analytic_vs_mc.py --ruac runs/ruac_v3 [--bayes runs/ruac_bayes_v3] [--scenes 12] [--objects 2] [--threads 1]

Agreement, per domain: ``--scenes`` held-out procedural scenes
(``ProceduralScenes(domain, n, seed=ppd.ruac.evaluation.EVAL_SEED + --seed)``), up to
``--objects`` objects each, RUAC's 3-click protocol with the clicks derived once from the
base decoder (:func:`ppd.ruac.evaluation.three_click_protocol`); the Pearson correlation
of the analytic and the MC (``--mc-samples`` draws, 20 as RUAC's paper) uncertainty maps,
pixels of all objects pooled. Cost: prompt encoder + decoder on one image, 16 prompt sets
of 3 clicks in one call, low-res outputs; the median ms of ``--repeats`` calls for SAM2's
own decoder (base), the head's analytic and its MC uncertainty.

The heads' segmentation and uncertainty quality (J&F, PAvPU, AURC, ECE, AUROC ...) is
``ppd bench --protocol uncertainty`` (docs/ruac.md has the command).
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch

from ppd import load_segmenter
from ppd.cli.common import add_threads_argument, apply_threads
from ppd.data.scenes import DOMAINS, ProceduralScenes
from ppd.prompts import random_clicks
from ppd.ruac.decoder import load_head
from ppd.ruac.evaluation import EVAL_SEED, decoder_latency, evaluate_method, three_click_protocol

LATENCY_ROWS = 16


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ruac", required=True, help="run folder (or head file) of a `ppd train-ruac` run")
    p.add_argument("--bayes", default=None, help="run folder of a `ppd train-ruac --no-aue` run (Bayes-only ablation)")
    p.add_argument("--model", default="sam2-tiny-synthetic", help="segmenter the heads were trained on")
    p.add_argument("--checkpoint", default=None, help="checkpoint file of --model")
    p.add_argument("--scenes", type=int, default=12, help="held-out scenes per domain (default 12)")
    p.add_argument("--objects", type=int, default=2, help="objects per scene, at most (default 2)")
    p.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated domains (default: all)")
    p.add_argument("--mc-samples", type=int, default=20, help="MC draws (default 20)")
    p.add_argument("--seed", type=int, default=0, help="scene offset and click seed (default 0)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per latency number (default 20)")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(p, args)
    domains = [d for d in args.domains.split(",") if d]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        p.error(f"unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    seg = load_segmenter(args.model, checkpoint=args.checkpoint)
    heads = {name: load_head(path, seg.model.sam_mask_decoder).to(seg.device).eval()
             for name, path in (("bayes", args.bayes), ("ruac", args.ruac)) if path}
    print(f"model {seg.name}; heads " + ", ".join(f"{n}: {p_}" for n, p_ in (("bayes", args.bayes), ("ruac", args.ruac)) if p_)
          + f"; {args.scenes} scenes per domain, up to {args.objects} objects each, seed {args.seed}; "
          f"{torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}")
    print(f"\nPearson of the analytic and MC-{args.mc_samples} uncertainty maps (pixels of all objects pooled)")
    print(f"{'domain':12s} " + " ".join(f"{n:>7s}" for n in heads))
    for d in domains:
        sc = ProceduralScenes(d, args.scenes, seed=EVAL_SEED + args.seed)
        scenes = [sc[i] for i in range(len(sc))]
        embs = [seg.encode(s.image) for s in scenes]
        clicks = three_click_protocol(seg, scenes, max_objects=args.objects, seed=args.seed, embeddings=embs)
        cells = []
        for head in heads.values():
            maps = {mode: evaluate_method(seg, head, scenes, clicks, mode, args.mc_samples, seed=args.seed,
                                          embeddings=embs, return_maps=True)[1]["uncertainty"]
                    for mode in ("analytic", "mc")}
            flat = {mode: np.concatenate([np.ravel(m) for m in v]) for mode, v in maps.items()}
            cells.append(float(np.corrcoef(flat["analytic"], flat["mc"])[0, 1]))
        print(f"{d:12s} " + " ".join(f"{c:7.3f}" for c in cells))

    scene = ProceduralScenes("train", 1, seed=EVAL_SEED + args.seed + 777)[0]
    emb = seg.encode(scene.image)
    rng = np.random.default_rng(args.seed)
    sets = [random_clicks(scene.masks[0], 2, 1, rng) for _ in range(LATENCY_ROWS)]
    coords = np.stack([s.point_coords for s in sets])
    labels = np.stack([s.point_labels for s in sets])
    head = next(iter(heads.values()))  # every head has the same architecture
    base = decoder_latency(seg, None, emb, coords, labels, "base", repeats=args.repeats)
    analytic = decoder_latency(seg, head, emb, coords, labels, "analytic", repeats=args.repeats)
    mc = decoder_latency(seg, head, emb, coords, labels, "mc", args.mc_samples, repeats=args.repeats)
    print(f"\ndecoder latency, {LATENCY_ROWS} prompt sets of 3 clicks in one call, median of {args.repeats}: "
          f"base {base:.1f} ms, analytic {analytic:.1f} ms ({analytic / base:.2f}x), "
          f"MC-{args.mc_samples} {mc:.1f} ms ({mc / base:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
