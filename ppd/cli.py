"""The ``ppd`` command line. Library code logs; this module owns progress and output."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("ppd.cli")


def _parse_points(text: str) -> tuple[np.ndarray, np.ndarray]:
    """'x,y,l;x,y,l' -> coords (K, 2) float32, labels (K,) int64."""
    coords, labels = [], []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        fields = [f.strip() for f in part.split(",")]
        if len(fields) != 3:
            raise ValueError(f"point {i} {part!r}: expected 'x,y,label' (label 1 = foreground, 0 = background)")
        try:
            x, y, lab = float(fields[0]), float(fields[1]), int(fields[2])
        except ValueError:
            raise ValueError(f"point {i} {part!r}: x and y must be numbers and label 0 or 1") from None
        if lab not in (0, 1):
            raise ValueError(f"point {i} {part!r}: label must be 1 (foreground) or 0 (background)")
        coords.append((x, y))
        labels.append(lab)
    if not coords:
        raise ValueError("--points is empty; give at least one 'x,y,label'")
    return np.asarray(coords, np.float32), np.asarray(labels, np.int64)


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    from ppd.io import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def add_device_arguments(p: argparse.ArgumentParser, embedding_cache: bool = True) -> None:
    """``--device``, ``--precision`` and (unless ``embedding_cache`` is False: commands
    that time encoding) ``--embedding-cache``, the same in every command that loads a
    segmenter."""
    from ppd.segmenter import PRECISIONS  # torch is loaded by then: building the parser imports the agents

    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument(
        "--precision", choices=PRECISIONS, default=None,
        help="segmenter precision: bf16 autocast (CUDA only; the default there for official SAM2 models, as "
        "SAM2's predictor) or fp32 (CPU, the bundled model; on CUDA it reproduces CPU results)",
    )
    if not embedding_cache:
        return
    p.add_argument(
        "--embedding-cache", metavar="DIR", default=None,
        help="keep image embeddings in DIR (created if missing) and reuse them in later runs: an image is "
        "encoded once per model, precision and device type, not once per process (default: in memory only)",
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="sam2-tiny-synthetic", help="segmenter name (default: the bundled sam2-tiny-synthetic)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file for --model (required for official SAM2 names)")
    add_device_arguments(p)


# ----------------------------------------------------------------------------- segment
def cmd_segment(args: argparse.Namespace) -> int:
    from ppd import load_segmenter
    from ppd.viz import overlay

    image = _read_image(args.image)
    coords, labels = _parse_points(args.points)
    box = None
    if args.box:
        box = np.asarray([float(v) for v in args.box.split(",")], np.float32)
        if box.shape != (4,):
            raise ValueError("--box must be 'x0,y0,x1,y1'")
    seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                         cache_dir=args.embedding_cache)
    multimask = args.multimask if args.multimask is not None else len(coords) == 1 and box is None
    pred = seg.predict(image, coords, labels, boxes=box, multimask=multimask)
    out = Path(args.out)
    _save_png((pred.masks[0] * 255).astype(np.uint8), out / "mask.png")
    _save_png(overlay(image, pred.masks[0], coords, labels), out / "overlay.png")
    print(f"mask: {out / 'mask.png'}  overlay: {out / 'overlay.png'}")
    print(f"predicted IoU {pred.scores[0]:.3f}, mask area {int(pred.masks[0].sum())} px")
    return 0


# ----------------------------------------------------------------------------- pretrain
def cmd_pretrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ppd.config import build_config
    from ppd.pretrain import PretrainConfig, pretrain

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


# ----------------------------------------------------------------------------- train-ruac
def cmd_train_ruac(args: argparse.Namespace) -> int:
    """``ppd train-ruac``: train a RUAC head with a progress bar, print the held-out check."""
    from tqdm import tqdm

    from ppd.config import build_config
    from ppd.ruac.train import CONFIG_FILENAME, RuacTrainConfig, train_ruac

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


# ----------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Segment procedural scenes with the bundled model; write an overlay grid."""
    from tqdm import tqdm

    from ppd import load_segmenter
    from ppd.data.scenes import DOMAINS, make_scene
    from ppd.metrics import iou
    from ppd.prompts import farthest_click
    from ppd.viz import grid, overlay

    seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                         cache_dir=args.embedding_cache)
    tiles, rows = [], []
    for domain in tqdm(DOMAINS, desc="segmenting", unit="domain"):
        scores = []
        for i in range(args.scenes):
            scene = make_scene(args.seed + i, domain)
            emb = seg.encode(scene.image)
            gt = scene.masks[0]
            ps = farthest_click(gt)
            pred = seg.predict(emb, ps.point_coords, ps.point_labels, multimask=True)
            scores.append(float(iou(pred.masks[0], gt)))
            if i < 4:
                tiles.append(overlay(scene.image, pred.masks[0], ps.point_coords, ps.point_labels))
        rows.append((domain, float(np.mean(scores))))
    out = Path(args.out)
    _save_png(grid(tiles, cols=4), out / "demo_overlay.png")
    print(f"1-click IoU of {seg.name} on {args.scenes} procedural scenes per domain:")
    for domain, score in rows:
        print(f"  {domain:12s} {score:.3f}")
    print(f"overlays (rows = domains {', '.join(DOMAINS)}): {out / 'demo_overlay.png'}")
    return 0


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from ppd.config import add_dataclass_args
    from ppd.pretrain import PretrainConfig

    parser = argparse.ArgumentParser(
        prog="ppd",
        description="Point prompts for SAM2, made better by reinforcement learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("segment", help="segment one image from point prompts", description="Segment one image from point prompts; writes mask.png and overlay.png.")
    p.add_argument("--image", required=True, help="image file (PNG/JPEG...)")
    p.add_argument("--points", required=True, help="prompts as 'x,y,label;x,y,label' in pixels (label 1 fg, 0 bg)")
    p.add_argument("--box", default=None, help="optional box 'x0,y0,x1,y1' in pixels")
    p.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None, help="decode 3 masks and keep the best (default: on for a single click)")
    p.add_argument("--out", default="segment_out", help="output folder (default: segment_out)")
    _add_model_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "pretrain",
        help="train the small SAM2 model on procedural scenes",
        description="Train sam2-tiny-synthetic from scratch on procedural scenes (SAM-style interactive recipe). "
        "Writes OUT/model.pt (fp16, loadable with load_segmenter(checkpoint=...)), config.json, metrics.json, last.pt.",
    )
    p.add_argument("--out", default="runs/pretrain", help="run folder (default: runs/pretrain)")
    p.add_argument("--config", default=None, help="YAML/JSON file with PretrainConfig fields (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_dataclass_args(p, PretrainConfig, skip=("model",))
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "train",
        help="adversarial attacker/defender DQN training",
        description="Train the PPD attacker and defender (alternating DQN phases, PPD Algorithm 1) on the bundled "
        "model and procedural scenes by default. Writes OUT/defender.zip, attacker.zip, config.yaml, metrics.json, examples.png.",
    )
    from ppd.agents.train import add_train_arguments, run_train

    add_train_arguments(p)
    p.set_defaults(func=run_train)

    from ppd.ruac.train import RuacTrainConfig

    p = sub.add_parser(
        "train-ruac",
        help="train the RUAC Bayesian mask decoder (pixel uncertainty) on a frozen SAM2",
        description="Train RUAC's Bayesian (Weibull) mask head and its style/deformation attackers on a frozen SAM2 "
        "(default: the bundled model) with procedural scenes of one source domain. Writes OUT/config.yaml, "
        "ruac_head.pt (load with load_segmenter(decoder='ruac', ruac_checkpoint=OUT)), last.pt (--resume), "
        "metrics.json and TensorBoard events in OUT/tb. --no-aue trains the Bayes-only ablation.",
    )
    p.add_argument("--config", default=None, help="YAML/JSON file with RuacTrainConfig fields (flags override it)")
    p.add_argument("--out", default="runs/ruac", help="run folder (default: runs/ruac)")
    p.add_argument("--resume", action="store_true", help="continue OUT from OUT/last.pt (uses OUT/config.yaml unless --config is given; a different config is an error)")
    add_dataclass_args(p, RuacTrainConfig, skip=("head",))
    p.set_defaults(func=cmd_train_ruac)

    p = sub.add_parser(
        "refine",
        help="refine a prompt set with a trained defender",
        description="Refine point prompts with a trained defender; writes the refined points, mask and overlay.",
    )
    from ppd.agents.defender import add_refine_arguments, run_refine

    add_refine_arguments(p)
    p.set_defaults(func=run_refine)

    p = sub.add_parser("demo", help="segment procedural scenes with the bundled model", description="Segment procedural scenes of every domain with one click each and write an overlay grid.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--scenes", type=int, default=8, help="scenes per domain (default: 8)")
    p.add_argument("--seed", type=int, default=123, help="first scene seed (default: 123)")
    _add_model_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ppd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
