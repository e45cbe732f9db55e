"""Paired-bootstrap intervals and the run summary against their definitions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ppd.bench.protocols.clicks import ClicksConfig, ClicksProtocol
from ppd.bench.schema import COLUMNS
from ppd.bench.stats import (ALL, bootstrap_ci, paired_bootstrap, resample_weights, split_system_key, summarize,
                             system_key)


class Hist(ClicksProtocol):
    """The click protocol with histogram rows (as an uncertainty protocol writes them)."""

    reliability = "rel_"
    risk_coverage = "rc_"


def synthetic(seed: int = 0, n_images: int = 12, objects: int = 3) -> pd.DataFrame:
    """Two models x two domains of the click protocol (max 5 clicks), correlated per object,
    m2 better by 0.05; a few NaN values and histogram rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for domain in ("shapes", "texture"):
        for i in range(n_images):
            for o in range(objects):
                base = rng.uniform(0.2, 0.8)
                for model, shift in (("m1", 0.0), ("m2", 0.05)):
                    curve = np.clip(base + shift + 0.04 * np.arange(5) + rng.normal(0, 0.02, 5), 0, 1)
                    for k, v in enumerate(curve, 1):
                        rows.append((model, domain, "clicks", "clicks", f"img{i}", o, "clean", f"iou@{k}", v))
                    for t in (85, 90):
                        hit = np.flatnonzero(curve >= t / 100)
                        rows.append((model, domain, "clicks", "clicks", f"img{i}", o, "clean", f"noc@{t}",
                                     float(hit[0] + 1 if hit.size else 5)))
                        rows.append((model, domain, "clicks", "clicks", f"img{i}", o, "clean", f"nof@{t}",
                                     float(hit.size == 0)))
                    for b in range(4):
                        rows.append((model, domain, "clicks", "clicks", f"img{i}", o, "clean", f"rel_count@{b}", 10.0))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.loc[[3, 50], "value"] = np.nan
    return df


PROTOCOLS = {"clicks": Hist(ClicksConfig(max_clicks=5))}


def test_intervals_cover_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    hits = 0
    for rep in range(200):
        _, lo, hi = bootstrap_ci(rng.normal(1.0, 2.0, 60), n_boot=1000, seed=rep)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_estimate_is_the_mean_and_the_interval_contains_it():
    values = np.array([1.0, 2.0, 3.0, 10.0, np.nan])
    est, lo, hi = bootstrap_ci(values)
    assert est == 4.0
    assert 1.0 <= lo < est < hi <= 10.0


def test_sum_stat_sums_and_its_interval_is_around_the_count():
    values = np.r_[np.ones(20), np.zeros(80)]
    est, lo, hi = bootstrap_ci(values, stat="sum")
    assert est == 20.0
    assert 10 <= lo < 20 < hi <= 30


def test_paired_interval_of_a_difference_is_narrower_than_unpaired():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1, 80)
    a, b = z + rng.normal(0, 0.1, 80), z + 0.1 + rng.normal(0, 0.1, 80)
    r = paired_bootstrap(np.c_[a, b], n_boot=2000, seed=0)
    assert r["delta"][0] == 0 and r["delta_low"][0] == 0 and r["delta_high"][0] == 0
    assert r["delta"][1] == pytest.approx(np.mean(b - a))
    paired = r["delta_high"][1] - r["delta_low"][1]
    g = np.random.default_rng(1)
    diffs = b[g.integers(0, 80, (2000, 80))].mean(1) - a[g.integers(0, 80, (2000, 80))].mean(1)
    unpaired = np.subtract(*np.quantile(diffs, [0.975, 0.025]))
    assert paired < 0.4 * unpaired
    assert r["delta_low"][1] > 0  # the paired interval sees the 0.1 difference


def test_difference_uses_only_items_both_systems_have():
    x = np.array([[1.0, 2.0], [2.0, np.nan], [3.0, 5.0]])
    r = paired_bootstrap(x, n_boot=200)
    assert r["n"].tolist() == [3, 2]
    assert r["value"].tolist() == [2.0, 3.5]
    assert r["delta"][1] == pytest.approx(1.5)  # (1 + 2) / 2 on items 0 and 2


def test_same_seed_same_intervals_other_seed_other_intervals():
    x = np.random.default_rng(0).normal(size=(50, 3))
    a, b, c = paired_bootstrap(x, seed=7), paired_bootstrap(x, seed=7), paired_bootstrap(x, seed=8)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["ci_low"], c["ci_low"])
    # one column alone: the same resamples; the sums may differ in the last bit (BLAS
    # kernels order a one-column product differently from a three-column one)
    np.testing.assert_allclose(bootstrap_ci(x[:, 0], seed=7), (a["value"][0], a["ci_low"][0], a["ci_high"][0]),
                               rtol=1e-12, atol=1e-15)


def test_stratified_weights_keep_each_stratum_size():
    w = resample_weights([3, 5, 2], 100, np.random.default_rng(0))
    assert w.shape == (100, 10)
    np.testing.assert_array_equal(w[:, :3].sum(1), 3)
    np.testing.assert_array_equal(w[:, 3:8].sum(1), 5)
    np.testing.assert_array_equal(w[:, 8:].sum(1), 2)
    assert w[:, :3].std(0).min() > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="stat must be one of"):
        bootstrap_ci([1.0, 2.0], stat="median")
    with pytest.raises(ValueError, match="strata sizes sum to 3, values have 4 items"):
        paired_bootstrap(np.zeros((4, 2)), strata=[1, 2])


def test_summary_equals_groupby_means_and_sums_exactly():
    df = synthetic()
    s = summarize(df, PROTOCOLS, n_boot=200)
    json.dumps(s, allow_nan=False)
    assert list(s["clicks"]) == ["shapes", "texture", ALL]
    clicks = df[~df.metric.str.startswith("rel_")]
    means = clicks.groupby(["domain", "model", "method", "condition", "metric"]).value.mean()
    sums = clicks.groupby(["domain", "model", "method", "condition", "metric"]).value.sum()
    counts = clicks.groupby(["domain", "model", "method", "condition", "metric"]).value.count()
    for (domain, model, method, condition, metric), mean in means.items():
        entry = s["clicks"][domain][system_key(model, method, condition)][metric]
        expected = sums[(domain, model, method, condition, metric)] if metric.startswith("nof@") else mean
        assert entry["value"] == expected
        assert entry["n"] == counts[(domain, model, method, condition, metric)]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    pooled = clicks.groupby(["model", "method", "condition", "metric"]).value.mean()
    for (model, method, condition, metric), mean in pooled.items():
        if not metric.startswith("nof@"):
            assert s["clicks"][ALL][system_key(model, method, condition)][metric]["value"] == mean
    nof = s["clicks"][ALL]["m1/clicks/clean"]["nof@90"]
    assert nof["value"] == clicks[(clicks.model == "m1") & (clicks.metric == "nof@90")].value.sum()
    assert float(nof["value"]).is_integer()


def test_summary_layout_order_deltas_and_no_histograms():
    df = synthetic()
    s = summarize(df, PROTOCOLS, n_boot=200)
    table = s["clicks"]["shapes"]
    assert list(table) == ["m1/clicks/clean", "m2/clicks/clean"]
    assert split_system_key("my/model/clicks/clean") == ("my/model", "clicks", "clean")
    metrics = list(table["m1/clicks/clean"])
    assert metrics[:7] == ["iou@1", "iou@3", "iou@5", "noc@85", "noc@90", "nof@85", "nof@90"]
    assert set(metrics) == {f"iou@{k}" for k in range(1, 6)} | {"noc@85", "noc@90", "nof@85", "nof@90"}
    ref, other = table["m1/clicks/clean"]["iou@1"], table["m2/clicks/clean"]["iou@1"]
    assert (ref["delta"], ref["delta_low"], ref["delta_high"]) == (0.0, 0.0, 0.0)
    assert set(ref) == {"value", "ci_low", "ci_high", "n", "delta", "delta_low", "delta_high"}
    assert 0 < other["delta_low"] < 0.05 < other["delta_high"] < 0.1  # m2 is 0.05 better, correlated


def test_deltas_are_taken_within_each_condition():
    """Under a second condition (an attack), each system is compared with the first system
    of that condition, not with the first system of the run."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        base = rng.uniform(0.3, 0.7)
        for method, condition, v in (("a", "clean", base), ("b", "clean", base + 0.1),
                                     ("a", "attacked", base - 0.3), ("b", "attacked", base - 0.2)):
            rows.append(("m", "d", "clicks", method, f"img{i}", 0, condition, "iou@1", v))
    s = summarize(pd.DataFrame(rows, columns=list(COLUMNS)), PROTOCOLS, n_boot=100)["clicks"]["d"]
    assert s["m/a/clean"]["iou@1"]["delta"] == 0.0 and s["m/a/attacked"]["iou@1"]["delta"] == 0.0
    assert s["m/b/clean"]["iou@1"]["delta"] == pytest.approx(0.1)
    assert s["m/b/attacked"]["iou@1"]["delta"] == pytest.approx(0.1)  # not -0.1 against m/a/clean


def test_summary_is_deterministic_and_independent_of_row_order():
    df = synthetic()
    a = summarize(df, PROTOCOLS, n_boot=300, seed=3)
    assert json.dumps(a) == json.dumps(summarize(df, PROTOCOLS, n_boot=300, seed=3))
    shuffled = df.sample(frac=1.0, random_state=0).sort_values("model", kind="stable")  # m1 stays the reference
    b = summarize(shuffled, PROTOCOLS, n_boot=300, seed=3)
    assert list(b["clicks"]) == list(pd.unique(shuffled.domain)) + [ALL]  # order of appearance
    for domain, table in a["clicks"].items():
        for key, cells in table.items():
            for metric, entry in cells.items():
                # the same resamples; only float summation order may differ
                assert b["clicks"][domain][key][metric] == pytest.approx(entry, rel=1e-12), (domain, key, metric)
    c = summarize(df, PROTOCOLS, n_boot=300, seed=4)
    assert json.dumps(a) != json.dumps(c)


def test_all_domains_interval_is_stratified():
    """Pooled over domains with very different levels: a stratified resample keeps each
    domain's share, so the interval is narrower than pooling the items would give."""
    rows = [("m", d, "p", "x", f"i{i}", 0, "clean", "iou", level + 0.01 * (i % 3))
            for d, level in (("a", 0.1), ("b", 0.9)) for i in range(30)]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    s = summarize(df, {}, n_boot=500)
    e = s["p"][ALL]["m/x/clean"]["iou"]
    assert e["value"] == pytest.approx(0.5 + 0.01)
    assert e["ci_high"] - e["ci_low"] < 0.02
    _, lo, hi = bootstrap_ci(df.value.to_numpy(), n_boot=500)
    assert hi - lo > 0.1
