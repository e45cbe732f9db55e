"""The report: its files, figures, tables (equal to the summary and to the results) and
the self-contained HTML, on a synthetic run of two tiny domains and no model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ppd.bench.figures import bar_metrics, pick_examples, risk_coverage
from ppd.bench.protocols.base import Protocol
from ppd.bench.protocols.clicks import ClicksConfig, ClicksProtocol
from ppd.bench.report import cell, describe, fmt, metric_format, write_report
from ppd.bench.schema import COLUMNS, Example, Unit, encode_mask
from ppd.bench.stats import ALL, summarize
from ppd.data.types import Scene

HW = (32, 32)
BINS = 5


class UncertaintyLike(Protocol):
    """A protocol with reliability and risk-coverage histograms (as the uncertainty one)."""

    name = "unc"
    title = "Uncertainty"
    table_metrics = ("iou", "ece", "auroc")
    lower_is_better = frozenset({"ece"})
    example_metric = "iou"
    reliability = "rel_"
    risk_coverage = "rc_"


def scene(domain: str, image: str) -> Scene:
    """A 32 x 32 image with two square objects, different per image."""
    rng = np.random.default_rng([ord(c) for c in domain + image])
    masks = np.zeros((2, *HW), bool)
    o = int(rng.integers(0, 6))
    masks[0, 2 + o:14 + o, 3:15] = True
    masks[1, 18:30, 16 + o // 2:28] = True
    y, x = np.mgrid[:HW[0], :HW[1]]
    img = np.stack([60 + 3 * x, 60 + 3 * y, np.full(HW, 120)], -1).astype(float)
    img[masks[0]] = (220, 180, 60)
    img[masks[1]] = (70, 200, 220)
    img += rng.normal(0, 8, img.shape)
    return Scene(np.clip(img, 0, 255).astype(np.uint8), masks, domain=domain)


def synthetic_run(n_images: int = 4, seed: int = 0):
    """``(results, protocols, examples, load_scene, meta)`` of a made-up run."""
    rng = np.random.default_rng(seed)
    protocols = {"clicks": ClicksProtocol(ClicksConfig(max_clicks=5)), "unc": UncertaintyLike()}
    rows, examples = [], []
    for domain in ("shapes", "texture"):
        for i in range(n_images):
            image = f"{domain[:2]}{i}"
            sc = scene(domain, image)
            bases = rng.uniform(0.3, 0.8, 2)  # per object, shared by the models (paired)
            for model, shift in (("tiny", 0.0), ("tiny+ruac", 0.06)):
                for o in range(2):
                    base = bases[o]
                    curve = np.clip(base + shift + 0.05 * np.arange(5), 0, 1)
                    for k, v in enumerate(curve, 1):
                        rows.append((model, domain, "clicks", "clicks", image, o, "clean", f"iou@{k}", v))
                    for t in (85, 90):
                        hit = np.flatnonzero(curve >= t / 100)
                        rows.append((model, domain, "clicks", "clicks", image, o, "clean", f"noc@{t}",
                                     float(hit[0] + 1 if hit.size else 5)))
                        rows.append((model, domain, "clicks", "clicks", image, o, "clean", f"nof@{t}", float(hit.size == 0)))
                    pred = np.roll(sc.masks[o], int(rng.integers(1, 4)), axis=1)
                    examples.append((Unit(model, domain, i, image, "clicks"),
                                     Example("clicks", o, "iou@3", float(curve[2]), [[8.0, 8.0, 1], [20.0, 6.0, 0]],
                                             encode_mask(pred))))
                    for method in ("entropy", "ruac"):
                        good = shift + (0.1 if method == "ruac" else 0.0)
                        rows += [(model, domain, "unc", method, image, o, "clean", "iou", base + shift),
                                 (model, domain, "unc", method, image, o, "clean", "ece", 0.2 - good + rng.normal(0, .02)),
                                 (model, domain, "unc", method, image, o, "clean", "auroc", 0.7 + good)]
                        for b in range(BINS):
                            conf = (b + 0.5) / BINS
                            n = 100.0
                            rows += [(model, domain, "unc", method, image, o, "clean", f"rel_count@{b}", n),
                                     (model, domain, "unc", method, image, o, "clean", f"rel_conf@{b}", conf * n),
                                     (model, domain, "unc", method, image, o, "clean", f"rel_hit@{b}",
                                      n * min(1.0, conf + 0.1 - good)),
                                     (model, domain, "unc", method, image, o, "clean", f"rc_count@{b}", n),
                                     (model, domain, "unc", method, image, o, "clean", f"rc_hit@{b}",
                                      n * min(1.0, 0.5 + 0.1 * b + good))]
                    examples.append((Unit(model, domain, i, image, "unc"),
                                     Example("ruac", o, "iou", base + shift, [[8.0, 8.0, 1]], encode_mask(pred),
                                             box=[2.0, 2.0, 20.0, 20.0])))
    results = pd.DataFrame(rows, columns=list(COLUMNS))
    meta = {"title": "Synthetic bench", "command": "ppd bench --quick --out /tmp/x", "config": {"seed": 0},
            "machine": "test machine, 2 CPU cores", "seconds": 83.5,
            "skipped": [{"model": "tiny", "domain": "texture", "image": "broken", "protocol": "clicks",
                         "reason": "mask 30x30 differs from image 32x32"}]}
    return results, protocols, examples, scene, meta


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results, protocols, examples, load_scene, meta = synthetic_run()
    summary = summarize(results, protocols, n_boot=200)
    out = tmp_path_factory.mktemp("report")
    files = write_report(out, results, summary, protocols, examples, load_scene, meta)
    return out, files, results, summary


def table_after(md: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after ``heading``, as one dict per row."""
    block = []
    for ln in md[md.index(heading):].splitlines()[1:]:
        if ln.startswith("|"):
            block.append(ln)
        elif block:
            break
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in block[2:]]


def test_files_exist_and_every_linked_figure_exists(report):
    out, files, _, _ = report
    assert files["report.md"] == out / "report.md" and files["report.html"] == out / "report.html"
    md = files["report.md"].read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {f"figures/{p}_{k}.png" for p in ("clicks",) for k in ("curve", "bars", "examples")} <= set(linked)
    assert {f"figures/unc_{k}.png" for k in ("bars", "reliability", "risk_coverage", "examples")} <= set(linked)
    assert "figures/unc_curve.png" not in linked  # no curve declared
    for rel in linked:
        assert (out / rel).is_file() and (out / rel).stat().st_size > 5000, rel
        assert files[rel] == out / rel
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(Path(r).name for r in linked)


def test_figures_are_readable_pngs(report):
    from PIL import Image

    out, files, _, _ = report
    with Image.open(out / "figures/clicks_examples.png") as im:
        w, h = im.size
    assert w >= 1000 and h >= 6 * 250  # 4 columns, 4 worst + 2 median rows
    with Image.open(out / "figures/clicks_curve.png") as im:
        assert im.size[0] >= 1000  # three panels: two domains and all


def test_header_lists_run_and_skipped_items(report):
    md = report[1]["report.md"].read_text()
    assert md.startswith("# Synthetic bench\n")
    assert "`ppd bench --quick --out /tmp/x`" in md
    assert "Machine: test machine, 2 CPU cores" in md and "Run time: 1 min 23 s" in md
    assert "Skipped items: 1" in md
    assert "| tiny | texture | broken | clicks | mask 30x30 differs from image 32x32 |" in md


def test_markdown_tables_equal_summary_and_results(report):
    _, files, results, summary = report
    md = files["report.md"].read_text()
    clicks = md[md.index("## Interactive clicks"):]
    rows = table_after(clicks, "### Domain `shapes`")
    assert [r["model"] for r in rows] == ["tiny", "tiny+ruac"]
    assert list(rows[0])[:3] == ["model", "method", "objects"]
    r = rows[1]
    sel = results[(results.protocol == "clicks") & (results.domain == "shapes") & (results.model == "tiny+ruac")]
    mean_iou1 = sel[sel.metric == "iou@1"].value.mean()
    value, lo, hi = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", r["iou@1 ↑"]).groups())
    assert value == round(100 * mean_iou1, 1)
    entry = summary["clicks"]["shapes"]["tiny+ruac/clicks/clean"]["iou@1"]
    assert (lo, hi) == (round(100 * entry["ci_low"], 1), round(100 * entry["ci_high"], 1))
    assert r["nof@90 ↓"].split(" [")[0] == str(int(sel[sel.metric == "nof@90"].value.sum()))
    assert float(r["noc@85 ↓"].split(" [")[0]) == round(sel[sel.metric == "noc@85"].value.mean(), 2)
    assert r["objects"] == "8"
    assert list(rows[0])[-7:] == ["iou@1 ↑", "iou@3 ↑", "iou@5 ↑", "noc@85 ↓", "noc@90 ↓", "nof@85 ↓", "nof@90 ↓"]
    # the all-domains table and the paired differences
    everything = table_after(clicks, "### All domains")
    pooled = results[(results.protocol == "clicks") & (results.model == "tiny") & (results.metric == "iou@5")]
    assert float(everything[0]["iou@5 ↑"].split(" [")[0]) == round(100 * pooled.value.mean(), 1)
    diff = table_after(clicks[clicks.index("### All domains"):], "Difference to **tiny · clicks**")
    assert [d["model"] for d in diff] == ["tiny+ruac"]
    assert diff[0]["iou@1 ↑"] == "+6.0 [+6.0, +6.0]"  # the same objects, 0.06 better each
    unc = md[md.index("## Uncertainty"):]
    rows = table_after(unc, "### Domain `texture`")
    assert [(r["model"], r["method"]) for r in rows] == [("tiny", "entropy"), ("tiny", "ruac"),
                                                        ("tiny+ruac", "entropy"), ("tiny+ruac", "ruac")]
    e = summary["unc"]["texture"]["tiny/ruac/clean"]["ece"]
    assert rows[1]["ece ↓"] == f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
    assert not any(k.startswith(("rel_", "rc_")) for k in rows[0])


def test_metric_sentences_and_formats():
    p = ClicksProtocol()
    assert describe("iou@3", p) == "mean IoU after 3 click(s)"
    assert "never reaches 90%" in describe("nof@90", p)
    assert (metric_format("iou@1", p), metric_format("nof@90", p), metric_format("noc@90", p),
            metric_format("ece", p), metric_format("dice", p)) == ("percent", "count", "clicks", "plain", "percent")
    assert fmt(0.61234, "percent") == "61.2" and fmt(3.0, "count") == "3" and fmt(None, "plain") == "–"
    assert cell({"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "delta": 0.01, "delta_low": -0.02, "delta_high": 0.03},
                "percent", delta=True) == "+1.0 [-2.0, +3.0]"
    assert bar_metrics(p, set(p.table_metrics)) == ["iou@1", "noc@85"]


def test_html_is_self_contained_and_has_the_same_tables(report):
    out, files, _, summary = report
    page = files["report.html"].read_text()
    md = files["report.md"].read_text()
    n_fig = len(re.findall(r"!\[", md))
    assert page.count('src="data:image/png;base64,') + page.count('src="data:image/jpeg;base64,') == n_fig
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", page, re.I)
    assert "<script" not in page.lower() and "@import" not in page
    entry = summary["clicks"][ALL]["tiny/clicks/clean"]["iou@3"]
    cell_text = f"{100 * entry['value']:.1f} [{100 * entry['ci_low']:.1f}, {100 * entry['ci_high']:.1f}]"
    assert f'<td class="num">{cell_text}</td>' in page and cell_text in md
    assert page.count("<table>") == len(re.findall(r"^\| :---", md, re.M)) == 13  # per protocol 3 tables (2 domains, all) and their differences; skipped


def test_examples_worst_first_then_median():
    _, protocols, examples, _, _ = synthetic_run()
    picked = pick_examples(examples, protocols["clicks"], n_worst=3, n_median=2)
    values = sorted(e.value for u, e in examples if u.protocol == "clicks")
    assert [t for t, _, _ in picked] == ["worst"] * 3 + ["median"] * 2
    assert [e.value for _, _, e in picked[:3]] == values[:3]
    assert values[3] <= picked[3][2].value <= picked[4][2].value <= values[-1]


def test_risk_coverage_from_histograms():
    cov, risk = risk_coverage([10, 0, 30], [0, 0, 30])  # bin 2 most confident and all right
    np.testing.assert_allclose(cov, [0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.25])
