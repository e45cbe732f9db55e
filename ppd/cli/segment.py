"""``ppd segment``: one image, point prompts (and a box) in, mask and overlay out."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ppd.cli.common import add_model_arguments, parse_points, read_image, save_png

HELP = "segment one image from point prompts"
DESCRIPTION = "Segment one image from point prompts; writes mask.png and overlay.png."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="image file (PNG/JPEG...)")
    p.add_argument("--points", required=True, help="prompts as 'x,y,label;x,y,label' in pixels (label 1 fg, 0 bg)")
    p.add_argument("--box", default=None, help="optional box 'x0,y0,x1,y1' in pixels")
    p.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None, help="decode 3 masks and keep the best (default: on for a single click)")
    p.add_argument("--out", default="segment_out", help="output folder (default: segment_out)")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ppd import load_segmenter
    from ppd.viz import overlay

    image = read_image(args.image)
    coords, labels = parse_points(args.points)
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
    save_png((pred.masks[0] * 255).astype(np.uint8), out / "mask.png")
    save_png(overlay(image, pred.masks[0], coords, labels), out / "overlay.png")
    print(f"mask: {out / 'mask.png'}  overlay: {out / 'overlay.png'}")
    print(f"predicted IoU {pred.scores[0]:.3f}, mask area {int(pred.masks[0].sum())} px")
    return 0
