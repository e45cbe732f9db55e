"""The benchmark report: ``report.md`` and a self-contained ``report.html`` from a summary.

Both files are rendered from one list of blocks (heading, paragraph, list, table, figure,
code), so they hold the same text and numbers; every table cell is read from the summary
(:func:`ppd.bench.stats.summarize`), never recomputed. The markdown links the figures in
``figures/``; the HTML embeds them as base64 data URIs (PNG; large photo-like grids as JPEG) and has inline CSS only, so it
can be mailed or archived as one file. A small renderer is written here rather than a
markdown library because the blocks are few and fixed, and the HTML must not depend on
what a markdown flavour does with tables.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ppd.io import save_text

from ppd.bench.figures import protocol_figures
from ppd.bench.stats import ALL, condition_references, split_system_key

log = logging.getLogger(__name__)

#: Metrics shown as percentages with one decimal (fractions in [0, 1] of overlap or accuracy).
PERCENT = re.compile(r"^(m?iou|dice|dsc|j|f|jf|j&f|j_and_f|pavpu|acc|accuracy)(@.*|_.*)?$")
MAX_SKIPPED_LISTED = 200

#: (pattern, sentence) of the metrics the bundled protocols write; {0} is the number after "@".
DESCRIPTIONS: tuple[tuple[str, str], ...] = (
    (r"iou@(\d+)", "mean IoU after {0} click(s)"),
    (r"noc@(\d+)", "mean number of clicks until the IoU reaches {0}% (the click budget when it never does)"),
    (r"nof@(\d+)", "number of objects whose IoU never reaches {0}% within the click budget"),
    (r"m?iou", "mean intersection over union of predicted and true mask"),
    (r"dice|dsc", "mean Dice coefficient (F1 of the pixels) of predicted and true mask"),
    (r"jf|j&f|j_and_f", "mean of region similarity J (IoU) and boundary F-measure"),
    (r"pavpu", "patch accuracy versus patch uncertainty: how often accurate patches are certain and wrong ones uncertain"),
    (r"e_?aurc", "excess area under the risk-coverage curve over an ideal ranking of the pixels"),
    (r"aurc", "area under the risk-coverage curve (pixel error rate as less confident pixels are rejected)"),
    (r"ece", "expected calibration error of the pixel probabilities"),
    (r"auroc", "pixel AUROC of the uncertainty for telling wrong pixels from right ones"),
    (r"pearson", "Pearson correlation of per-object uncertainty with per-object error"),
    (r"seconds|time|refine_seconds", "seconds per object"),
)


def metric_format(metric: str, protocol: Any) -> str:
    """How a metric's numbers are written: ``percent`` (IoU-like, one decimal), ``count``
    (a protocol's sums, integers), ``clicks`` (two decimals) or ``plain`` (three)."""
    if metric in getattr(protocol, "sums", ()):
        return "count"
    if PERCENT.match(metric):
        return "percent"
    if metric.startswith("noc@"):
        return "clicks"
    return "plain"


def fmt(value: float | None, kind: str, signed: bool = False) -> str:
    """One number in ``kind`` (see :func:`metric_format`); None (NaN) is an en dash."""
    if value is None:
        return "–"
    sign = "+" if signed else ""
    if kind == "percent":
        return f"{100 * value:{sign}.1f}"
    if kind == "count":
        return f"{value:{sign}.0f}"
    if kind == "clicks":
        return f"{value:{sign}.2f}"
    return f"{value:{sign}.3f}"


def cell(entry: dict[str, Any] | None, kind: str, delta: bool = False) -> str:
    """``value [low, high]`` of a summary entry (or its difference to the reference)."""
    if entry is None:
        return "–"
    v, lo, hi = ("delta", "delta_low", "delta_high") if delta else ("value", "ci_low", "ci_high")
    if entry.get(v) is None:
        return "–"
    return f"{fmt(entry[v], kind, delta)} [{fmt(entry[lo], kind, delta)}, {fmt(entry[hi], kind, delta)}]"


def describe(metric: str, protocol: Any) -> str:
    """A sentence on what ``metric`` means (the protocol's own ``descriptions`` first)."""
    own = getattr(protocol, "descriptions", None) or {}
    if metric in own:
        return own[metric]
    for pattern, text in DESCRIPTIONS:
        m = re.fullmatch(pattern, metric)
        if m:
            return text.format(*m.groups())
    return "mean per object" if metric not in getattr(protocol, "sums", ()) else "sum over objects"


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``12.3 s``."""
    s = float(seconds)
    if s >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s:.1f} s"


@dataclass
class Doc:
    """The report as blocks, rendered by :func:`to_markdown` and :func:`to_html`."""

    blocks: list[tuple] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def items(self, items: list[str]) -> None:
        self.blocks.append(("list", items))

    def table(self, header: list[str], rows: list[list[str]], numeric_from: int = 0) -> None:
        self.blocks.append(("table", header, rows, numeric_from))

    def figure(self, caption: str, path: Path, rel: str) -> None:
        self.blocks.append(("figure", caption, path, rel))

    def code(self, text: str, lang: str = "") -> None:
        self.blocks.append(("code", text, lang))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(doc: Doc) -> str:
    out = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            out.append(f"{'#' * block[1]} {block[2]}")
        elif kind == "para":
            out.append(block[1])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "table":
            _, header, rows, numeric_from = block
            align = ["---:" if i >= numeric_from > 0 else ":---" for i in range(len(header))]
            lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
            lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "figure":
            out.append(f"![{block[1]}]({block[3]})")
        elif kind == "code":
            out.append(f"```{block[2]}\n{block[1]}\n```")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape ``text`` for HTML, turning `code` spans and **bold** into tags."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1150px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 4px 9px; white-space: nowrap; }
th { background: #f3f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
code, pre { background: #f4f4f4; border-radius: 3px; font-size: 13px; }
code { padding: 1px 4px; }
pre { padding: .8em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
""".strip()


def to_html(doc: Doc, title: str) -> str:
    body = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            body.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif kind == "para":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            _, header, rows, numeric_from = block
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            trs = "".join(
                "<tr>" + "".join(f'<td class="num">{_inline(c)}</td>' if i >= numeric_from > 0 else f"<td>{_inline(c)}</td>"
                                 for i, c in enumerate(row)) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "figure":
            mime, raw = _embeddable(Path(block[2]))
            data = base64.b64encode(raw).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block[1])}" src="data:{mime};base64,{data}">'
                        f"<figcaption>{_inline(block[1])}</figcaption></figure>")
        elif kind == "code":
            body.append(f"<pre><code>{html.escape(block[1], quote=False)}</code></pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _system_label(key: str) -> list[str]:
    model, method, condition = split_system_key(key)
    return [model, method, condition]


def _tables(doc: Doc, name: str, protocol: Any, summary_p: dict[str, Any]) -> None:
    systems = list(summary_p.get(ALL, {}))
    present = {m for d in summary_p.values() for cells in d.values() for m in cells}
    metrics = [m for m in getattr(protocol, "table_metrics", ()) if m in present]
    if not metrics:  # a protocol without a declared table: every summarised metric
        metrics = list(dict.fromkeys(m for d in summary_p.values() for cells in d.values() for m in cells))
    lower = getattr(protocol, "lower_is_better", frozenset())
    kinds = {m: metric_format(m, protocol) for m in metrics}
    conditions = any(split_system_key(k)[2] != "clean" for k in systems)
    domains = [d for d in summary_p if d != ALL]
    shown = domains + [ALL] if len(domains) > 1 else domains
    header = ["model", "method"] + (["condition"] if conditions else []) + ["objects"]
    header += [f"{m} {'↓' if m in lower else '↑'}" for m in metrics]
    numeric_from = len(header) - len(metrics) - 1
    # the differences' references: the first system of each condition
    refs = list(dict.fromkeys(systems[i] for i in condition_references([split_system_key(k)[2] for k in systems])))
    for domain in shown:
        table = summary_p[domain]
        doc.heading(3, "All domains" if domain == ALL else f"Domain `{domain}`")
        rows, deltas = [], []
        for key in systems:
            if key not in table:
                continue
            cells = table[key]
            label = _system_label(key)
            label = label if conditions else label[:2]
            n = max((c["n"] for c in cells.values()), default=0)
            rows.append(label + [str(n)] + [cell(cells.get(m), kinds[m]) for m in metrics])
            if key not in refs:
                deltas.append(label + [str(n)] + [cell(cells.get(m), kinds[m], delta=True) for m in metrics])
        doc.table(header, rows, numeric_from)
        shown_refs = [r for r in refs if r in table]
        if deltas and shown_refs:
            labels = ", ".join(f"**{' · '.join(_system_label(r) if conditions else _system_label(r)[:2])}**"
                               for r in shown_refs)
            what = "the first system of its condition, " if len(refs) > 1 else ""
            doc.para(f"Difference to {what}{labels}, on the objects both measured (paired; an interval "
                     "that excludes 0 is a difference the data support):")
            doc.table(header, deltas, numeric_from)


def _protocol_section(doc: Doc, out_dir: Path, name: str, protocol: Any, summary_p: dict[str, Any],
                      figures: dict[str, Path], own_captions: dict[str, str] | None = None) -> None:
    doc.heading(2, f"{getattr(protocol, 'title', '') or name} (`{name}`)")
    lower = getattr(protocol, "lower_is_better", frozenset())
    metrics = [m for m in getattr(protocol, "table_metrics", ())
               if any(m in cells for d in summary_p.values() for cells in d.values())]
    if metrics:
        doc.para("Metrics (↑ higher is better, ↓ lower is better):")
        doc.items([f"`{m}` {'↓' if m in lower else '↑'}: {describe(m, protocol)}"
                   + (" (IoU-like: in %)" if metric_format(m, protocol) == "percent" else "") for m in metrics])
    doc.para("Each cell: the estimate over objects and its 95% paired-bootstrap interval `value [low, high]`; "
             "`objects`: the objects measured.")
    _tables(doc, name, protocol, summary_p)
    captions = {
        "curve": "IoU versus clicks per model and method, one panel per domain; bands are 95% intervals.",
        "bars": "Per-domain comparison with 95% intervals.",
        "reliability": "Reliability diagrams: fraction of foreground pixels per probability bin; the diagonal "
                       "is perfect calibration.",
        "risk_coverage": "Risk (pixel error rate) versus coverage, most confident pixels first; lower is better.",
        "examples": "The worst examples and a few median ones: image, prompts (green + positive, red x negative), "
                    "prediction, error (false positives red, false negatives blue).",
    }
    if figures:
        doc.heading(3, "Figures")
    for kind, path in figures.items():
        doc.figure((own_captions or {}).get(kind) or captions.get(kind, kind), path, path.relative_to(out_dir).as_posix())


#: Figures larger than this are embedded in report.html as JPEG (the photo-like example
#: grids: about a tenth of their PNG size); the PNG files stay beside the report.
JPEG_ABOVE_BYTES = 400_000


def _embeddable(path: Path) -> tuple[str, bytes]:
    """``(mime type, bytes)`` of a figure for a data URI."""
    raw = path.read_bytes()
    if len(raw) <= JPEG_ABOVE_BYTES:
        return "image/png", raw
    import io

    from PIL import Image

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=85, optimize=True)
    return "image/jpeg", buf.getvalue()


def _aggregates_section(doc: Doc, aggregates: dict[str, Any] | None) -> None:
    """A protocol's :meth:`~ppd.bench.protocols.base.Protocol.aggregates`: a table when
    they map rows to flat columns (``{"model/domain": {"gam": ..., ...}}``), else JSON."""
    if not aggregates:
        return
    doc.heading(3, "Aggregates")
    rows = list(aggregates.items())
    flat = all(isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()) for _, v in rows)
    if not flat:
        doc.code(json.dumps(aggregates, indent=2, sort_keys=True, default=str), "json")
        return
    columns = list(dict.fromkeys(k for _, v in rows for k in v))
    doc.table(["", *columns], [[str(key), *(fmt_value(v.get(c)) for c in columns)] for key, v in rows], numeric_from=1)


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.3f}"
    return "" if v is None else str(v)


def write_report(out_dir: str | Path, results: pd.DataFrame, summary: dict[str, Any], protocols: dict[str, Any],
                 examples: list[tuple[Any, Any]], load_scene: Callable[[str, str], Any],
                 meta: dict[str, Any]) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``.

    Returns ``{"report.md": path, "report.html": path, "figures/NAME.png": path, ...}``.
    """
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    title = meta.get("title") or "ppd bench"
    skipped = list(meta.get("skipped") or [])
    doc = Doc()
    doc.heading(1, title)
    doc.para(f"Command: `{meta.get('command', '')}`")
    doc.items([
        f"Machine: {meta.get('machine', 'unknown')}",
        f"Run time: {duration(meta.get('seconds', 0.0))}",
        f"Measured values: {len(results)} rows over {results[['domain', 'image']].drop_duplicates().shape[0]} images"
        f" in {results['domain'].nunique()} domain(s)",
        f"Skipped items: {len(skipped)}" + (" (listed at the end)" if skipped else ""),
    ])
    written: dict[str, Path] = {}
    names = [n for n in protocols if n in summary or (results["protocol"] == n).any()]
    for name in names:
        protocol = protocols[name]
        results_p = results[results["protocol"] == name]
        summary_p = summary.get(name, {})
        figures = protocol_figures(fig_dir, name, protocol, results_p, summary_p, examples, load_scene)
        own = protocol.figures(results_p, fig_dir, load_scene, examples) if hasattr(protocol, "figures") else {}
        figures.update({kind: path for kind, (path, _) in own.items()})
        written.update({p.relative_to(out_dir).as_posix(): p for p in figures.values()})
        _protocol_section(doc, out_dir, name, protocol, summary_p, figures,
                          {kind: caption for kind, (_, caption) in own.items()})
        _aggregates_section(doc, (meta.get("aggregates") or {}).get(name))
    if skipped:
        doc.heading(2, "Skipped items")
        listed = skipped[:MAX_SKIPPED_LISTED]
        doc.table(["model", "domain", "image", "protocol", "reason"],
                  [[str(s.get(k, "")) for k in ("model", "domain", "image", "protocol", "reason")] for s in listed])
        if len(skipped) > len(listed):
            doc.para(f"… and {len(skipped) - len(listed)} more.")
    doc.heading(2, "Configuration")
    doc.code(json.dumps(meta.get("config", {}), indent=2, sort_keys=True, default=str), "json")
    md, page = out_dir / "report.md", out_dir / "report.html"
    save_text(to_markdown(doc), md)  # atomically: a killed run never leaves half a report
    save_text(to_html(doc, title), page)
    log.info("report written to %s and %s (%d figures)", md, page, len(written))
    return {"report.md": md, "report.html": page, **written}
