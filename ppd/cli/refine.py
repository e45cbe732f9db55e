"""``ppd refine``: refine one image's point prompts with a trained defender; writes the
refined points, mask and overlays."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ppd.agents.defender import PromptDefender
from ppd.agents.label_filter import check_relabel_gate, check_threshold
from ppd.agents.refine_config import RefineConfig, add_refine_arguments, refine_config_from_args
from ppd.cli.common import add_device_arguments, parse_points, read_image, save_png

HELP = "refine a prompt set with a trained defender"
DESCRIPTION = ("Refine point prompts with a trained defender; writes the refined points, mask and overlay. "
               "With --reference and --reference-mask (one annotated example), the points may come from feature "
               "matching and the output is chosen by how its mask compares with the reference.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``ppd refine``."""
    p.add_argument(
        "--defender",
        "--run",
        dest="run",
        default=None,
        help="training run folder (with defender.zip) or the defender .zip (default: the bundled defender)",
    )
    p.add_argument("--image", required=True, help="image file (PNG/JPEG...)")
    p.add_argument("--points", default=None,
                   help="prompts as 'x,y,label;x,y,label' in pixels (label 1 fg, 0 bg); optional with --reference "
                   "(default: feature-matching points from the reference)")
    p.add_argument("--reference", metavar="IMG", default=None,
                   help="one-shot: an annotated example of the object's class (with --reference-mask); the output is "
                   "picked among the points, their single edits and the defender's output by the run's edit chooser "
                   "(edit_chooser.json, else the bundled one; ppd.oneshot_quality)")
    p.add_argument("--reference-mask", metavar="PNG", default=None,
                   help="the reference object's mask (nonzero pixels), the size of --reference")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML/JSON file of refine options (RefineConfig fields, as OUT/refine_config.yaml holds); "
        "the flags given override it",
    )
    # defaults=False: a flag not given leaves the --config file's value (or the default)
    add_refine_arguments(p.add_argument_group("refine options (RefineConfig; saved as OUT/refine_config.yaml)"),
                         defaults=False)
    p.add_argument("--out", default="refine_out", help="output folder (default: refine_out)")
    p.add_argument("--model", default=None, help="segmenter name (default: the one the defender was trained with)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file for --model")
    p.add_argument(
        "--ruac-checkpoint",
        default=None,
        help="RUAC head (ppd train-ruac run folder or ruac_head.pt): decode with the RUAC Bayesian decoder and "
        "write uncertainty.png (default: the head named in the run's config, if any)",
    )
    add_device_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="unused: refinement is deterministic (kept for a uniform CLI)")


def _reference(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray] | None:
    """``(image, mask)`` of ``--reference`` / ``--reference-mask`` (None without), checked."""
    given = (args.reference is not None, args.reference_mask is not None)
    if given[0] != given[1]:
        raise ValueError("--reference and --reference-mask go together: the example image and its object's mask")
    if not given[0]:
        if args.points is None:
            raise ValueError("give --points, or --reference and --reference-mask to derive them (one-shot)")
        return None
    from ppd.data.loaders import read_object_mask

    ref_image, ref_mask = read_image(args.reference), read_object_mask(args.reference_mask)
    if ref_mask.shape != ref_image.shape[:2]:
        raise ValueError(f"--reference-mask is {ref_mask.shape[1]} x {ref_mask.shape[0]} pixels but --reference is "
                         f"{ref_image.shape[1]} x {ref_image.shape[0]}: they must match")
    return ref_image, ref_mask


def run(args: argparse.Namespace) -> int:
    """``ppd refine``: writes refined.json (with the result's trace), refine_config.yaml
    (the options it ran with: defaults <- ``--config`` FILE <- the flags given),
    mask.png, overlay.png and input_overlay.png (and uncertainty.png with the RUAC
    decoder)."""
    from ppd.io import save_json
    from ppd.viz import overlay

    image = read_image(args.image)
    reference = _reference(args)
    coords, labels = parse_points(args.points) if args.points is not None else (None, None)
    seg = None
    ruac = getattr(args, "ruac_checkpoint", None)
    if args.model or args.checkpoint or ruac:
        from ppd.models import BUNDLED_NAME
        from ppd.segmenter import load_segmenter

        kw = dict(decoder="ruac", ruac_checkpoint=ruac) if ruac else {}
        seg = load_segmenter(
            args.model or BUNDLED_NAME, checkpoint=args.checkpoint, device=args.device, precision=args.precision,
            cache_dir=args.embedding_cache, **kw
        )
    # the flags' own checks first, so that an error names the flag
    if getattr(args, "filter_threshold", None) is not None:
        check_threshold(args.filter_threshold, "--filter-threshold")
    if getattr(args, "filter_relabel_gate", None) is not None:
        check_relabel_gate(args.filter_relabel_gate, "--filter-relabel-gate")
    if not getattr(args, "use_filter", True) and any(
            getattr(args, n, None) is not None for n in ("filter_threshold", "filter_action", "filter_relabel_gate")):
        raise ValueError("--filter-threshold / --filter-action / --filter-relabel-gate have no effect with --no-filter")
    config: RefineConfig = refine_config_from_args(args, args.config)
    defender = PromptDefender.load(
        args.run, segmenter=seg, device=args.device, config=config,
        precision=None if seg is not None else args.precision,
        embedding_cache=None if seg is not None else args.embedding_cache,
    )
    derived = coords is None
    if derived:  # one-shot: the feature-matching points of the reference
        from ppd.oneshot import feature_matching

        coords, labels = feature_matching(defender.segmenter, *reference, image)
    defender.record(image)  # encode and build the graph first: the timing is refinement only
    t = time.perf_counter()
    if reference is None:
        res = defender.refine(image, coords, labels, max_steps=config.max_steps)
    else:
        from ppd.oneshot_quality import chooser_of_run, refine_with_reference

        res = refine_with_reference(defender, image, coords, labels, *reference, chooser_of_run(args.run)[0])
    took = time.perf_counter() - t
    before = defender.segmenter.predict(image, coords, labels)
    out = Path(args.out)
    save_png((res.mask * 255).astype(np.uint8), out / "mask.png")
    save_png(overlay(image, res.mask, res.point_coords, res.point_labels), out / "overlay.png")
    save_png(overlay(image, before.masks[0], coords, labels), out / "input_overlay.png")
    config.save(out / "refine_config.yaml")
    written = [out / "refined.json", out / "refine_config.yaml", out / "mask.png", out / "overlay.png",
               out / "input_overlay.png"]
    if res.uncertainty is not None:
        save_png(np.round(res.uncertainty * 255).astype(np.uint8), out / "uncertainty.png")
        written.append(out / "uncertainty.png")
    save_json(
        {
            "point_coords": res.point_coords.tolist(),
            "point_labels": res.point_labels.tolist(),
            "kept": res.kept.tolist(),
            "relabeled": res.relabeled.tolist(),
            "score": res.score,
            "input_score": float(before.scores[0]),
            "steps": res.steps,
            "trace": list(res.trace),
            "seconds": took,
            **({} if reference is None else {"reference": str(args.reference)}),
            **({"input_points": np.column_stack([coords, labels]).tolist()} if derived else {}),
            **({} if res.uncertainty is None else {"mean_uncertainty": float(res.uncertainty.mean())}),
        },
        out / "refined.json",
    )
    print(
        f"kept {int(res.kept.sum())}/{len(res.kept)} points, relabelled {int(res.relabeled.sum())}, "
        f"{res.steps} steps in {took * 1000:.0f} ms; predicted IoU {float(before.scores[0]):.3f} -> {res.score:.3f}"
    )
    if defender.segmenter.device.type == "cuda":  # measured: 259 ms here against an 80 ms median once warm
        print("(the time includes CUDA's start-up on the first call; ppd bench's refine protocol times warm calls)")
    print("wrote " + ", ".join(str(f) for f in written))
    return 0
