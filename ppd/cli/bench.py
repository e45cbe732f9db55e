"""``ppd bench``: benchmark promptable segmentation on any dataset, with a report."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from pathlib import Path

HELP = "benchmark models on datasets under protocols (clicks, refine, uncertainty ...), with a report"
DESCRIPTION = """\
Measure one or more models on one or more datasets under the chosen protocols and write,
in --out: results.parquet (one row per measured value: model, domain, protocol, method,
image, object, condition, metric, value), summary.json, report.md and a self-contained
report.html (tables with paired-bootstrap 95% intervals, figures, example overlays), and
config.yaml (ppd bench --config OUT/config.yaml reruns it). Finished work is kept as it
finishes: after a kill the same command continues where it stopped.

data:      --data NAME=procedural:DOMAIN | NAME=DIR (images/ + masks/, or a folder per class) | NAME=FILE.json (COCO)
models:    --model [LABEL=]NAME[:CHECKPOINT][+ruac=HEAD]  (NAME: bundled or an official SAM2 config)
examples:  ppd bench --quick --out bench_out
           ppd bench --data coco=val/instances.json --sample 200 --model bundled \\
                     --model t=sam2.1_hiera_t:ckpt/sam2.1_hiera_tiny.pt --protocol clicks --out runs/bench
"""

#: Settings of --quick that flags left unset take.
QUICK = {"sample": 6, "max_objects": 4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ppd.bench.protocols import protocol_class, protocol_names
    from ppd.cli.common import PRECISIONS, device_arg

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", metavar="FILE", help="a config.yaml of an earlier run (flags given here override it)")
    p.add_argument("--data", action="append", metavar="NAME=SOURCE", help="a dataset, repeatable (each is a domain)")
    p.add_argument("--model", dest="models", action="append", metavar="SPEC",
                   help="a model, repeatable (default: bundled, the sam2-tiny-synthetic model shipped with ppd)")
    p.add_argument("--protocol", dest="protocols", action="append", choices=protocol_names(), metavar="P",
                   help=f"a protocol, repeatable: {', '.join(protocol_names())} (default: all)")
    p.add_argument("--out", help="output folder (default: bench_out)")
    g = p.add_argument_group("selection")
    g.add_argument("--sample", type=int, metavar="N", help="at most N images per dataset, drawn with --seed "
                   "(procedural: N scenes; default all images, 50 procedural scenes)")
    g.add_argument("--seed", type=int, help="seed of the sample and of every protocol's randomness (default 0)")
    g.add_argument("--min-area", type=int, metavar="PX", help="skip objects smaller than PX pixels (default 0)")
    g.add_argument("--max-objects", type=int, metavar="N", help="at most N objects per image, the largest (default all)")
    g.add_argument("--quick", action="store_true", default=None,
                   help="a small preset: every procedural domain (plus any --data), 6 images and 4 objects each, "
                   "every protocol at a small size, the bundled model and defender; under 3 minutes on 2 CPU cores")
    g = p.add_argument_group("compute")
    g.add_argument("--device", type=device_arg, help="cuda / cpu (default: cuda when available)")
    g.add_argument("--precision", choices=PRECISIONS, help="segmenter precision (default: fp32 on CPU, bf16 for official models on CUDA)")
    g.add_argument("--embedding-cache", metavar="DIR", help="keep image embeddings in DIR across runs")
    g.add_argument("--ray", action="store_true", default=None, help="run work units as Ray tasks on a local Ray (pip install 'ppd[ray]')")
    g.add_argument("--ray-address", metavar="ADDR", help="run on an existing Ray cluster (implies --ray)")
    g.add_argument("--workers", type=int, help="Ray workers per model (default 2)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's; 1 per Ray worker)")
    g.add_argument("--bootstrap", type=int, metavar="N", help="bootstrap resamples of the confidence intervals (default 1000)")
    seen: dict[str, tuple] = {}
    for name in protocol_names():
        cls = protocol_class(name).Config
        hints = typing.get_type_hints(cls)
        group = p.add_argument_group(f"{name} protocol")
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if flag in seen:  # a shared option sets it in every protocol that has it
                continue
            seen[flag] = (hints[f.name],)
            _add_field(group, flag, f, hints[f.name])


def _add_field(group, flag: str, f: dataclasses.Field, hint) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    help_text = f.metadata["help"]
    dest, metavar = f"opt_{f.name}", f.name.upper()
    if hint is bool:
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif origin is list:
        group.add_argument(flag, dest=dest, nargs="+", action="extend", type=args[0], default=None, metavar=metavar, help=help_text)
    else:
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        group.add_argument(flag, dest=dest, type=base, default=None, metavar=metavar, help=help_text)


def build_config(args: argparse.Namespace):
    """The run's :class:`BenchConfig`: --config (if given), then the flags given."""
    from ppd.bench.config import BenchConfig
    from ppd.bench.protocols import protocol_class, protocol_names
    from ppd.data.scenes import DOMAINS

    base = BenchConfig.load(args.config).__dict__ if args.config else {}
    d = dict(base)
    for key in ("data", "models", "protocols", "out", "sample", "seed", "min_area", "max_objects", "device", "precision",
                "embedding_cache", "ray", "ray_address", "workers", "threads", "bootstrap", "quick"):
        value = getattr(args, key, None)
        if value is not None:
            d[key] = value
    if d.get("ray_address"):
        d["ray"] = True
    if d.get("quick") and not args.config:
        names = {s.split("=", 1)[0] for s in d.get("data") or []}
        d["data"] = [f"{dom}=procedural:{dom}" for dom in DOMAINS if dom not in names] + list(d.get("data") or [])
        for key, value in QUICK.items():
            d.setdefault(key, value)
        d.setdefault("protocols", protocol_names())
        d.setdefault("out", "bench_out")
    d.setdefault("protocols", protocol_names())
    options = {k: dict(v) for k, v in (d.get("options") or {}).items()}
    for name in d["protocols"]:
        cls = protocol_class(name).Config
        for f in dataclasses.fields(cls):
            value = getattr(args, f"opt_{f.name}", None)
            if value is not None:
                options.setdefault(name, {})[f.name] = value
    if d.get("quick") and not args.config:
        for name in d["protocols"]:
            for key, value in protocol_class(name).quick.items():
                options.setdefault(name, {}).setdefault(key, value)
    d["options"] = options
    return BenchConfig(**d)


class UnitBar:
    """The progress bar over a run's units, as :func:`~ppd.bench.runner.run_bench`'s
    ``progress`` (skipped units counted beside it); :meth:`close` when the run returns."""

    def __init__(self) -> None:
        self.bar: typing.Any = None
        self.skipped = 0

    def __call__(self, total: int, done: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc="bench", unit="unit", dynamic_ncols=True)
        return self.tick

    def tick(self, unit, result) -> None:
        self.skipped += bool(result.skipped)
        if self.skipped:
            self.bar.set_postfix(skipped=self.skipped, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from ppd.bench.runner import run_bench

    cfg = build_config(args)
    bar = UnitBar()
    outcome = run_bench(cfg, bar, command="ppd " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    bar.close()
    done = outcome.units - outcome.ran
    print(f"{outcome.units} units ({outcome.ran} run now" + (f", {done} done before" if done else "")
          + f", {len(outcome.skipped)} skipped) in {outcome.seconds:.0f} s -> {outcome.out}")
    summary = _print_headline(outcome.files.get("summary"))
    for name, path in outcome.files.items():
        print(f"  {name:8s} {path}")
    if summary is not None:
        measured = {domain for block in (summary.get("protocols") or {}).values() for domain in block}
        unmeasured = [spec.name for spec in cfg.data_specs() if spec.name not in measured]
        if unmeasured:
            print(f"ppd bench: warning: no object was measured in --data {', '.join(unmeasured)}: every mask is empty, "
                  "--min-area / --max-objects left no object, every image was skipped, or (oneshot) no reference could be drawn "
                  "(see the warnings above)",
                  file=sys.stderr)
    return 0


def _print_headline(summary_path) -> dict | None:
    """Print the first table metric of every protocol over all domains, per system, with
    its 95% interval (the full tables are in the report); return the summary (None
    without one)."""
    import json

    from ppd.bench.protocols import protocol_class

    if not summary_path or not Path(summary_path).is_file():
        return None
    summary = json.loads(Path(summary_path).read_text())
    for protocol, block in (summary.get("protocols") or {}).items():
        overall = block.get("all") or {}
        metric = next(iter(protocol_class(protocol).table_metrics), None)
        for system, metrics in overall.items():
            cell = metrics.get(metric) if metric else None
            if cell and cell.get("value") is not None:
                lo, hi = cell.get("ci_low"), cell.get("ci_high")
                interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
                print(f"  {protocol:12s} {system:45s} {metric} {cell['value']:.3f}{interval}  (n={cell.get('n')})")
    return summary
