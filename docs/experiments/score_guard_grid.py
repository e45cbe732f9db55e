"""Which tolerance should the score guard (``min_score_gain``) have? Replays guards offline
on the per-set records of ``consensus_records.py``.

    python docs/experiments/score_guard_grid.py RECORDS_DIR

RECORDS_DIR holds ``trig_*.json`` (``consensus_records.py RUN OUT``: the defense bench's
sets) and ``gtrig_*.json`` (``consensus_records.py RUN OUT --generators``: the generator
bench's sets), per prompt set the input's and the defender's IoU and SAM score, the
consensus vote and the mask agreements. This replays the default path (keep_consistent,
then the consensus check) and then a guard that returns the input when the output's
score is below the input's plus ``g`` and the input's score is below ``t`` (with
``agree``: and the output's mask agrees with no more input clicks than the input's own
mask, the library's rule); it prints the mean refined-minus-input IoU on the generator
sets (train, texture, alt), on the coarse sets of those domains and of the other three,
and the lowest and mean IoU over every (defender, attacker) pair's attacked sets.
"""
import glob, json, sys
import numpy as np


def default_output(r):
    """(IoU, score, which) of the default path on record ``r`` (no guard)."""
    if r["ndrop"] == 0 and r["count"] == r["n"] and r["n"] >= 2 and r["pos"] > 0 and r["agree_in"] == r["n"]:
        return r["in"], r["score_in"], "keep"  # keep_consistent
    act = r["ndrop"] > 0 and r["agree_D"] < r["count"] and r["ndrop"] < r["n"] and r["count"] >= 2 / 3 * r["n"] - 1e-9
    if act and r["agree_K"] > r["agree_D"]:
        return r["K"], r["score_K"], "K"  # the consensus check's second rollout
    return r["D"], r["score_D"], "D"


def out(r, g, t, agree=False):
    o, s, w = default_output(r)
    agree_out = {"K": r.get("agree_K"), "D": r["agree_D"], "keep": r["agree_in"]}[w]
    if (w != "keep" and g is not None and s < r["score_in"] + g and r["score_in"] < t
            and (not agree or agree_out <= r["agree_in"])):
        return r["in"]
    return o


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    folder = sys.argv[1]
    recs = {f.split("/")[-1][:-5]: json.load(open(f)) for f in sorted(glob.glob(f"{folder}/*trig_*.json"))}
    sel = {"train", "texture", "alt"}
    print("rule".ljust(22), "gen(sel) | coarse(sel) coarse(other) | att min  att mean")
    rules = [(g, t, False) for g in (None, 0.02, 0.0, -0.01, -0.02, -0.03, -0.05) for t in (1.01, 0.95, 0.9, 0.85)
             if g is not None or t > 1] + [(g, 1.01, True) for g in (0.0, -0.05, -0.1)]
    for g, t, agree in rules:
        def mean_gain(d, keep):
            return np.mean([out(r, g, t, agree) - r["in"] for r in d if keep(r)])
        gs = [mean_gain(d, lambda r: r["domain"] in sel) for k, d in recs.items() if k.startswith("gtrig")]
        cs = [mean_gain(d, lambda r: r["kind"] == "coarse" and r["domain"] in sel) for k, d in recs.items() if k.startswith("trig")]
        ch = [mean_gain(d, lambda r: r["kind"] == "coarse" and r["domain"] not in sel) for k, d in recs.items() if k.startswith("trig")]
        at = [np.mean([out(r, g, t, agree) for r in d if r["kind"] == kind])
              for d in recs.values() for kind in sorted({r["kind"] for r in d if r["kind"].startswith("att")})]
        name = f"g={g} t={t}" + (" agree" if agree else "")
        print(name.ljust(22), f"{np.mean(gs):+.4f}  | {np.mean(cs):+.4f}     {np.mean(ch):+.4f}       | {min(at):.3f}  {np.mean(at):.4f}")


if __name__ == "__main__":
    main()
