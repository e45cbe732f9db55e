"""RUAC benchmark: segmentation and pixel-uncertainty quality across domains, and latency.

    python -m ppd.bench.ruac --base-only [--scenes 20]
    python -m ppd.bench.ruac --ruac runs/ruac [--bayes runs/bayes] [--scenes 20] [--out FILE.md] [--json FILE.json]

Methods (rows): SAM2's own decoder (``base``; its "uncertainty" is the normalised binary
entropy of ``sigmoid(logit)``), and for every given head run folder (``--bayes``: a
``ppd train-ruac --no-aue`` run, ``--ruac``: a full run) the Bayesian decoder with analytic
uncertainty and with MC uncertainty (``--mc-samples`` draws, default 20, as the paper
evaluates). Heads must have been trained on the benchmarked model (``--model`` /
``--checkpoint``, default the bundled one).

Data: ``--scenes`` held-out procedural scenes per domain (``ProceduralScenes(domain, n,
seed=ppd.ruac.evaluation.EVAL_SEED + --seed)``), up to ``--objects`` objects each;
``train`` is in-domain, ``texture``, ``clutter``, ``lowcontrast``, ``thin`` are shifted,
``alt`` is drawn by another generator. Prompts: RUAC's 3-click protocol
(:mod:`ppd.ruac.evaluation`), clicks derived once from the base decoder and reused for
every method (``--clicks FILE`` saves them, or reuses them when the file exists).

Columns: J&F and IoU (mean per object, x100), PAvPU (x100, thresholds 0.01/0.05/0.1),
AURC, E-AURC, ECE (15 bins), pixel AUROC of uncertainty for errors; pixels of all objects of
a domain pooled. Also: Pearson correlation of analytic vs MC uncertainty maps per domain,
and decoder latency (prompt encoder + decoder, low-res outputs, one image, 16 prompt sets of
3 clicks in one call; median ms) for base, analytic and MC.
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ppd.bench import add_threads_argument, apply_threads
from ppd.cli.common import add_device_arguments
from ppd.data.scenes import DOMAINS, SHIFTED_DOMAINS, ProceduralScenes

logger = logging.getLogger(__name__)

#: (key, header, scale, format) of the metric columns.
COLUMNS = (
    ("j_and_f", "J&F", 100.0, "{:.1f}"),
    ("iou", "IoU", 100.0, "{:.1f}"),
    ("pavpu", "PAvPU", 100.0, "{:.1f}"),
    ("aurc", "AURC", 1.0, "{:.4f}"),
    ("e_aurc", "E-AURC", 1.0, "{:.4f}"),
    ("ece", "ECE", 1.0, "{:.4f}"),
    ("auroc", "AUROC", 1.0, "{:.3f}"),
)
LATENCY_ROWS = 16


def _methods(heads: dict[str, Any], mc_samples: int) -> list[tuple[str, str, str | None]]:
    """(row label, evaluation mode, head name) of every benchmarked method."""
    rows: list[tuple[str, str, str | None]] = [("base", "base", None)]
    for name in heads:
        rows += [(f"{name} (analytic)", "analytic", name), (f"{name} (MC {mc_samples})", "mc", name)]
    return rows


def run_bench(
    seg,
    heads: dict[str, Any],
    domains: list[str],
    scenes_per_domain: int,
    objects: int = 3,
    mc_samples: int = 20,
    seed: int = 0,
    clicks_file: str | None = None,
    latency_repeats: int = 20,
    progress=None,
) -> dict[str, Any]:
    """Evaluate every method on every domain; returns a JSON-able dict (see :func:`to_markdown`).

    Args:
        seg: the base :class:`~ppd.segmenter.Segmenter` (SAM2's decoder).
        heads: name -> ``BayesianMaskDecoder`` on ``seg.model``'s decoder.
        domains: domain names.
        scenes_per_domain, objects, mc_samples, seed: see the module docstring.
        clicks_file: JSON file of the protocol's clicks (written if missing, else reused;
            its settings must match).
        latency_repeats: timed decoder calls per latency number.
        progress: optional ``progress(domain)`` callback, called after each domain.
    """
    from ppd.ruac.evaluation import EVAL_SEED, evaluate_method, load_clicks, save_clicks, three_click_protocol

    methods = _methods(heads, mc_samples)
    for h in heads.values():
        h.eval()
    saved_clicks: dict[str, Any] = {}
    if clicks_file and Path(clicks_file).is_file():
        rows, meta = load_clicks(clicks_file)
        want = {"scenes": scenes_per_domain, "objects": objects, "seed": seed}
        if {k: meta.get(k) for k in want} != want:
            raise ValueError(f"clicks file {clicks_file} was made with {meta}, not {want}; delete it or pass another")
        for d in domains:
            saved_clicks[d] = [c for c, dom in zip(rows, meta["domains_of_rows"]) if dom == d]
    results: dict[str, Any] = {"methods": [m[0] for m in methods], "domains": {}, "pearson_analytic_mc": {}}
    all_clicks, click_domains = [], []
    for d in domains:
        sc = ProceduralScenes(d, scenes_per_domain, seed=EVAL_SEED + seed)
        scenes = [sc[i] for i in range(len(sc))]
        embs = [seg.encode(s.image) for s in scenes]
        clicks = saved_clicks.get(d) or three_click_protocol(seg, scenes, max_objects=objects, seed=seed, embeddings=embs)
        all_clicks += clicks
        click_domains += [d] * len(clicks)
        per: dict[str, Any] = {}
        maps: dict[tuple[str, str], np.ndarray] = {}
        for label, mode, head_name in methods:
            head = heads.get(head_name) if head_name else None
            res, m = evaluate_method(seg, head, scenes, clicks, mode, mc_samples, seed=seed, embeddings=embs, return_maps=True)
            per[label] = res
            if head_name:
                maps[(head_name, mode)] = m["uncertainty"]
        results["domains"][d] = per
        results["pearson_analytic_mc"][d] = {
            name: float(np.corrcoef(maps[(name, "analytic")].ravel(), maps[(name, "mc")].ravel())[0, 1]) for name in heads
        }
        if progress:
            progress(d)
    if clicks_file and not Path(clicks_file).is_file():
        save_clicks(all_clicks, clicks_file, {"scenes": scenes_per_domain, "objects": objects, "seed": seed,
                                              "domains_of_rows": click_domains, "derived_with": seg.name})
    shifted = [d for d in domains if d in SHIFTED_DOMAINS]
    if shifted:
        results["shifted_mean"] = {
            label: {k: float(np.nanmean([results["domains"][d][label][k] for d in shifted])) for k, *_ in COLUMNS}
            for label, _, _ in methods
        }
    results["latency_ms"] = _latency(seg, heads, mc_samples, latency_repeats, seed)
    return results


def _latency(seg, heads: dict[str, Any], mc_samples: int, repeats: int, seed: int) -> dict[str, float]:
    from ppd.prompts import random_clicks
    from ppd.ruac.evaluation import EVAL_SEED, decoder_latency

    scene = ProceduralScenes("train", 1, seed=EVAL_SEED + seed + 777)[0]
    emb = seg.encode(scene.image)
    rng = np.random.default_rng(seed)
    sets = [random_clicks(scene.masks[0], 2, 1, rng) for _ in range(LATENCY_ROWS)]
    coords = np.stack([p.point_coords for p in sets])
    labels = np.stack([p.point_labels for p in sets])
    out = {"base": decoder_latency(seg, None, emb, coords, labels, "base", repeats=repeats)}
    if heads:
        head = next(iter(heads.values()))  # every head has the same architecture
        out["analytic"] = decoder_latency(seg, head, emb, coords, labels, "analytic", repeats=repeats)
        out[f"mc{mc_samples}"] = decoder_latency(seg, head, emb, coords, labels, "mc", mc_samples, repeats=repeats)
    return out


def _fmt(v: float, scale: float, fmt: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else fmt.format(v * scale)


def to_markdown(results: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """The benchmark as markdown tables."""
    lines = []
    if header:
        lines += ["# RUAC benchmark", ""] + [f"- {k}: {v}" for k, v in header.items()] + [""]
    lines += [
        "## Segmentation and pixel uncertainty (3-click protocol)",
        "",
        "| domain | method | objects | " + " | ".join(h for _, h, _, _ in COLUMNS) + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for d, per in results["domains"].items():
        kind = " (in-domain)" if d == "train" else " (shifted)" if d in SHIFTED_DOMAINS else " (held-out generator)" if d == "alt" else ""
        for label, r in per.items():
            cells = " | ".join(_fmt(r[k], s, f) for k, _, s, f in COLUMNS)
            lines.append(f"| {d}{kind} | {label} | {r['objects']} | {cells} |")
    if "shifted_mean" in results:
        for label, r in results["shifted_mean"].items():
            cells = " | ".join(_fmt(r[k], s, f) for k, _, s, f in COLUMNS)
            lines.append(f"| **shifted mean** | {label} | | {cells} |")
    pear = results.get("pearson_analytic_mc", {})
    names = sorted({n for v in pear.values() for n in v})
    if names:
        lines += ["", "## Analytic vs MC uncertainty (Pearson of the pixel maps)", "",
                  "| domain | " + " | ".join(names) + " |", "| --- | " + " | ".join("---:" for _ in names) + " |"]
        for d, v in pear.items():
            lines.append(f"| {d} | " + " | ".join(_fmt(v.get(n), 1.0, "{:.3f}") for n in names) + " |")
    lat = results.get("latency_ms", {})
    if lat:
        lines += ["", f"## Decoder latency (ms per call, {LATENCY_ROWS} prompt sets of 3 clicks on one image, median)", "",
                  "| decoder | ms |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in lat.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--base-only", action="store_true", help="benchmark SAM2's own decoder only")
    which.add_argument("--ruac", default=None, help="run folder (or head file) of a `ppd train-ruac` run")
    p.add_argument("--bayes", default=None, help="run folder of a `ppd train-ruac --no-aue` run (Bayes-only ablation)")
    p.add_argument("--model", default="sam2-tiny-synthetic", help="segmenter the heads were trained on")
    p.add_argument("--checkpoint", default=None, help="checkpoint file of --model")
    add_device_arguments(p)
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes per domain (default 20)")
    p.add_argument("--objects", type=int, default=3, help="objects per scene (default 3)")
    p.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated domains (default: all)")
    p.add_argument("--mc-samples", type=int, default=20, help="MC draws (default 20)")
    p.add_argument("--seed", type=int, default=0, help="scene offset and click seed (default 0)")
    p.add_argument("--clicks", default=None, help="JSON file of the protocol clicks: reused if it exists, else written")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed calls per latency number (default 20)")
    add_threads_argument(p)
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.bayes and not args.ruac:
        p.error("--bayes needs --ruac")
    domains = [d for d in args.domains.split(",") if d]
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        p.error(f"unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")

    import torch
    from tqdm import tqdm

    from ppd import io, load_segmenter
    from ppd.ruac.decoder import load_head

    apply_threads(p, args)
    seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                         cache_dir=args.embedding_cache)
    heads = {}
    for name, path in (("bayes", args.bayes), ("ruac", args.ruac)):
        if path:
            heads[name] = load_head(path, seg.model.sam_mask_decoder).to(seg.device)
    with tqdm(total=len(domains), desc="domains", unit="domain") as bar:
        def progress(d: str) -> None:
            bar.set_postfix_str(d)
            bar.update(1)

        results = run_bench(seg, heads, domains, args.scenes, args.objects, args.mc_samples, args.seed, args.clicks,
                            args.latency_repeats, progress)
    header = {
        "model": f"{seg.name} ({seg.info.get('checkpoint')})",
        "heads": ", ".join(f"{k}: {v}" for k, v in (("bayes", args.bayes), ("ruac", args.ruac)) if v) or "none",
        "data": f"{args.scenes} held-out scenes per domain, up to {args.objects} objects each, seed {args.seed}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, device {seg.device} ({seg.precision})",
    }
    results["header"] = header
    md = to_markdown(results, header)
    print(md)
    if args.out:
        io.save_text(md, args.out)
    if args.json:
        io.save_json(io.json_safe(results), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
