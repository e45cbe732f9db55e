"""``ppd demo``: what ppd does, as pictures. One-click segmentation of procedural scenes
of every domain (an overlay grid labelled by domain) and, given a trained defender,
coarse versus refined prompts on held-out scenes (a summary picture and an HTML page)."""

from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path

import numpy as np

from ppd.cli.common import add_model_arguments, save_png

HELP = "segment procedural scenes with the bundled model; show a defender's refinements"
DESCRIPTION = (
    "Segment procedural scenes of every domain with one click each and write an overlay grid (segment_overlay.png). "
    "With --defender RUN, also refine coarse prompt sets on held-out scenes of every domain and write "
    "refine_summary.png and refine_summary.html: coarse versus refined prompts, IoU before and after."
)

#: First seed of the held-out scenes the refinement summary draws (the defense bench's).
HELDOUT_SEED = 10_000_000 + 9000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--scenes", type=int, default=8, help="scenes per domain (default: 8)")
    p.add_argument("--seed", type=int, default=123, help="first scene seed of the segmentation grid (default: 123)")
    p.add_argument(
        "--defender", default=None, metavar="RUN",
        help="a ppd train run folder (or 'bundled'): also show its refinements of coarse prompt sets on held-out scenes",
    )
    add_model_arguments(p)


def _segment_grid(seg, scenes: int, seed: int) -> tuple[np.ndarray, list[tuple[str, float]]]:
    from tqdm import tqdm

    from ppd.data.scenes import DOMAINS, make_scene
    from ppd.metrics import iou
    from ppd.prompts import farthest_click
    from ppd.viz import caption, grid, overlay

    tiles, rows = [], []
    for domain in tqdm(DOMAINS, desc="segmenting", unit="domain"):
        scores = []
        for i in range(scenes):
            scene = make_scene(seed + i, domain)
            gt = scene.masks[0]
            ps = farthest_click(gt)
            pred = seg.predict(seg.encode(scene.image), ps.point_coords, ps.point_labels, multimask=True)
            scores.append(float(iou(pred.masks[0], gt)))
            if i < 4:
                tile = overlay(scene.image, pred.masks[0], ps.point_coords, ps.point_labels)
                tiles.append(caption(tile, f"{domain}  IoU {scores[-1]:.2f}"))
        rows.append((domain, float(np.mean(scores))))
    return grid(tiles, cols=4), rows


def _refine_summary(defender, scenes: int) -> tuple[np.ndarray, list[dict]]:
    """Per domain, ``scenes`` held-out scenes with a coarse prompt set each (seeded as the
    defense bench); the picture shows the first two of each domain."""
    from tqdm import tqdm

    from ppd.data.scenes import DOMAINS, ProceduralScenes
    from ppd.metrics import iou
    from ppd.prompts import coarse_prompts
    from ppd.viz import DROPPED, GROUND_TRUTH, MASK, NEGATIVE, POSITIVE, RELABELED, grid, legend, refine_tile

    seg = defender.segmenter
    tiles, rows = [], []
    for domain in tqdm(DOMAINS, desc="refining", unit="domain"):
        world = ProceduralScenes(domain, scenes, seed=HELDOUT_SEED)
        before, after = [], []
        for i in range(scenes):
            scene = world[i]
            rng = np.random.default_rng([HELDOUT_SEED, 0, i])
            obj = int(rng.integers(scene.num_objects))
            gt = scene.masks[obj]
            cp = coarse_prompts(gt, rng).prompts
            coarse = seg.predict(scene.image, cp.point_coords, cp.point_labels).masks[0]
            res = defender.refine(scene.image, cp.point_coords, cp.point_labels)
            before.append(float(iou(coarse, gt)))
            after.append(float(iou(res.mask, gt)))
            if i < 2:
                tiles.append(refine_tile(scene.image, gt, coarse, cp.point_coords, cp.point_labels,
                                         text=f"{domain}: coarse\nIoU {before[-1]:.2f}"))
                shown_labels = np.where(res.relabeled, 1 - cp.point_labels, cp.point_labels)
                tiles.append(refine_tile(scene.image, gt, res.mask, cp.point_coords, shown_labels, dropped=res.dropped,
                                         relabeled=res.relabeled,
                                         text=f"{domain}: refined\nIoU {before[-1]:.2f} -> {after[-1]:.2f}"))
        rows.append({"domain": domain, "scenes": scenes, "coarse_iou": float(np.mean(before)),
                     "refined_iou": float(np.mean(after))})
    picture = grid(tiles, cols=4)
    key = legend(picture.shape[1], [(MASK, "mask"), (GROUND_TRUTH, "ground truth"), (POSITIVE, "positive"),
                                    (NEGATIVE, "negative"), (DROPPED, "dropped"), (RELABELED, "relabelled")])
    return np.concatenate([picture, key], axis=0), rows


def _summary_html(png_path: Path, rows: list[dict], run: str) -> str:
    data = base64.b64encode(png_path.read_bytes()).decode("ascii")
    body = "".join(
        f"<tr><td>{html.escape(r['domain'])}</td><td>{r['scenes']}</td><td>{r['coarse_iou']:.3f}</td>"
        f"<td>{r['refined_iou']:.3f}</td><td>{r['refined_iou'] - r['coarse_iou']:+.3f}</td></tr>"
        for r in rows
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ppd: coarse vs refined prompts</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>Coarse versus refined prompts</h1><p>Defender: <code>{html.escape(run)}</code>. Held-out procedural "
        "scenes, one object and one noisy prompt set each (flipped labels, points across the boundary, outliers). "
        "Left of each pair: SAM's mask from the coarse set; right: from the refined set. Blue: mask; yellow line: "
        "ground truth; green / red: positive / negative click; grey crossed: dropped; magenta ring: relabelled.</p>"
        f"<img alt='coarse versus refined prompts' src='data:image/png;base64,{data}'>"
        "<h2>Mean IoU per domain</h2><table><tr><th>domain</th><th>scenes</th><th>coarse</th><th>refined</th>"
        f"<th>change</th></tr>{body}</table></body></html>"
    )


def run(args: argparse.Namespace) -> int:
    from ppd import load_segmenter
    from ppd.io import atomic_write

    if args.scenes < 1:
        raise ValueError(f"--scenes must be >= 1, got {args.scenes}")
    out = Path(args.out)
    seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                         cache_dir=args.embedding_cache)
    picture, rows = _segment_grid(seg, args.scenes, args.seed)
    save_png(picture, out / "segment_overlay.png")
    print(f"1-click IoU of {seg.name} on {args.scenes} procedural scenes per domain:")
    for domain, score in rows:
        print(f"  {domain:12s} {score:.3f}")
    print(f"segmentation overlays (4 scenes per domain): {out / 'segment_overlay.png'}")
    if args.defender is None:
        return 0

    from ppd.agents.defender import PromptDefender

    defender = PromptDefender.load(None if args.defender == "bundled" else args.defender, segmenter=seg)
    picture, rows = _refine_summary(defender, args.scenes)
    save_png(picture, out / "refine_summary.png")
    page = _summary_html(out / "refine_summary.png", rows, args.defender)
    atomic_write(out / "refine_summary.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    print(f"coarse -> refined mean IoU on {args.scenes} held-out scenes per domain:")
    for r in rows:
        print(f"  {r['domain']:12s} {r['coarse_iou']:.3f} -> {r['refined_iou']:.3f}")
    print(f"refinement summary: {out / 'refine_summary.png'}, {out / 'refine_summary.html'}")
    return 0
