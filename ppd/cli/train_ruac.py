"""``ppd train-ruac``: train a RUAC head with progress bars, print the held-out check."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train the RUAC Bayesian mask decoder (pixel uncertainty) on a frozen SAM2"
DESCRIPTION = (
    "Train RUAC's Bayesian (Weibull) mask head and its style/deformation attackers on a frozen SAM2 "
    "(default: the bundled model) with procedural scenes of one source domain. Writes OUT/config.yaml, "
    "ruac_head.pt (load with load_segmenter(decoder='ruac', ruac_checkpoint=OUT)), last.pt (--resume), "
    "metrics.json and TensorBoard events in OUT/tb. --no-aue trains the Bayes-only ablation."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ppd.config import add_dataclass_args
    from ppd.ruac.train_config import RuacTrainConfig

    p.add_argument("--config", default=None, help="YAML/JSON file with RuacTrainConfig fields (flags override it)")
    p.add_argument("--out", default="runs/ruac", help="run folder (default: runs/ruac)")
    p.add_argument("--resume", action="store_true", help="continue OUT from OUT/last.pt (uses OUT/config.yaml unless --config is given; a different config is an error)")
    add_dataclass_args(p, RuacTrainConfig, skip=("head",))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ppd.config import build_config
    from ppd.ruac.train import train_ruac
    from ppd.ruac.train_config import CONFIG_FILENAME, RuacTrainConfig

    out = Path(args.out)
    config_file = args.config
    if args.resume and not config_file and (out / CONFIG_FILENAME).is_file():
        config_file = str(out / CONFIG_FILENAME)  # flags still override it (and must agree)
    cfg = build_config(RuacTrainConfig, args, config_file)
    bars: dict[str, tqdm] = {}
    descs = {"pool": ("encoding scene pool", "scene"), "train": ("training RUAC head", "step"), "eval": ("held-out evaluation", "run")}

    def progress(what: str, i: int, n: int, stats: dict) -> None:
        bar = bars.get(what)
        if bar is None:
            desc, unit = descs.get(what, (what, "it"))
            bar = bars[what] = tqdm(total=n, desc=desc, unit=unit, dynamic_ncols=True)
        bar.n = i
        if stats:
            post = {"phase": int(stats.get("phase", 0)), "loss": f"{stats.get('total', 0.0):.3f}"}
            if "cal" in stats:
                post["cal"] = f"{stats['cal']:.3f}"
            bar.set_postfix(post, refresh=False)
        bar.refresh()
        if i >= n:
            bar.close()

    metrics = train_ruac(cfg, out, resume=args.resume, progress=progress)
    for bar in bars.values():
        bar.close()
    print(f"trained {cfg.steps} steps in {metrics['wall_clock_s']:.0f} s ({'RUAC' if cfg.aue else 'Bayes-only, --no-aue'}) -> {out}")
    final = metrics["final"]
    if final:
        print(f"held-out {cfg.domain} scenes, 3-click protocol ({final['base']['objects']} objects):")
        print(f"  {'decoder':10s} {'J&F':>6s} {'IoU':>6s} {'PAvPU':>6s} {'AURC':>7s} {'ECE':>7s} {'AUROC':>6s}")
        for name, r in final.items():
            print(f"  {name:10s} {100 * r['j_and_f']:6.1f} {100 * r['iou']:6.1f} {100 * r['pavpu']:6.1f} "
                  f"{r['aurc']:7.4f} {r['ece']:7.4f} {r['auroc']:6.3f}")
    print(f"use it with: ppd.load_segmenter({cfg.model!r}, decoder='ruac', ruac_checkpoint={str(out)!r})")
    return 0
