"""``ppd pretrain``: train the small SAM2 model on procedural scenes, with progress bars."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train the small SAM2 model on procedural scenes"
DESCRIPTION = (
    "Train sam2-tiny-synthetic from scratch on procedural scenes (SAM-style interactive recipe). "
    "Writes OUT/model.pt (fp16, loadable with load_segmenter(checkpoint=...)), config.json, metrics.json, last.pt."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ppd.config import add_dataclass_args
    from ppd.pretrain_config import PretrainConfig

    p.add_argument("--out", default="runs/pretrain", help="run folder (default: runs/pretrain)")
    p.add_argument("--config", default=None, help="YAML/JSON file with PretrainConfig fields (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_dataclass_args(p, PretrainConfig, skip=("model",))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ppd.config import build_config
    from ppd.pretrain import pretrain
    from ppd.pretrain_config import PretrainConfig

    cfg = build_config(PretrainConfig, args, args.config)
    bars: dict[str, tqdm] = {}

    def progress(what: str, i: int, n: int, stats: dict) -> None:
        bar = bars.get(what)
        if bar is None:
            desc = "drawing scene pool" if what == "pool" else "training"
            bar = bars[what] = tqdm(total=n, desc=desc, unit="scene" if what == "pool" else "step", dynamic_ncols=True)
        bar.n = i
        if stats:
            bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats.get('iou_r0', 0):.3f}", lr=f"{stats['lr']:.1e}", refresh=False)
        bar.refresh()
        if i >= n:
            bar.close()

    final = pretrain(cfg, args.out, resume=args.resume, progress=progress)
    print(f"wrote {Path(args.out) / 'model.pt'}")
    print("held-out in-domain: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in final.items()))
    print(f"use it with: ppd segment --checkpoint {Path(args.out) / 'model.pt'} ...")
    return 0
