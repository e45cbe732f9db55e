"""``ppd train``: adversarial attacker/defender training, with a progress bar that shows
the round, the phase, the agents' recent reward and the last evaluation's numbers, and a
summary at the end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ppd.agents.train_config import TrainConfig

HELP = "adversarial attacker/defender DQN training"
DESCRIPTION = (
    "Train the PPD attacker and defender (alternating DQN phases, PPD Algorithm 1) on the bundled "
    "model and procedural scenes by default, or on your own images with --data (folders of images/ and masks/, "
    "COCO files, procedural domains; evaluation on images held out by the seed, or on --eval-data) and any "
    "segmenter ppd loads (--segmenter, --checkpoint). Writes OUT/defender.zip, attacker.zip, config.yaml, metrics.json, examples.png. "
    "The progress bar shows the round, the phase (attacker, defender, evaluation, label filter), each agent's mean "
    "episode reward over its last episodes and the last evaluation's mean IoUs; -v also logs a line per phase."
)

#: Evaluation metrics shown in the progress bar, by their short names there.
BAR_METRICS = {
    "ideal_iou": "ideal",
    "attacked_iou": "attacked",
    "defended_attacked_iou": "def.attacked",
    "coarse_iou": "coarse",
    "defended_coarse_iou": "def.coarse",
}


class TrainBar:
    """The command's main bar: env steps of both agents; its description is the round and
    phase, its numbers each agent's recent mean episode reward and the last evaluation's
    mean IoUs (:data:`BAR_METRICS`)."""

    def __init__(self, bar: Any) -> None:
        from ppd.agents.train_progress import mean_episode_reward

        self.bar = bar
        self.numbers: dict[str, float] = {}
        self.recent_reward = mean_episode_reward

    def report(self, rep: Any) -> None:
        """``train(report=...)``: a :class:`~ppd.agents.train_progress.PhaseReport`."""
        if not rep.done:
            self.bar.set_description(rep.title, refresh=False)
        elif rep.phase in ("attacker", "defender") and "reward" in rep.numbers:
            self.numbers[f"{rep.phase[:3]}.reward"] = rep.numbers["reward"]
        elif rep.phase == "evaluation":
            self.numbers.update({short: rep.numbers[k] for k, short in BAR_METRICS.items() if k in rep.numbers})
        self.bar.set_postfix(self.numbers, refresh=rep.done)

    def steps(self, model: Any, env_steps: int) -> None:
        """Advance by one vector step of ``model`` and show its recent reward."""
        recent = self.recent_reward(model)
        if recent is not None:
            self.numbers[f"{model.policy.role[:3]}.reward"] = recent[0]
            self.bar.set_postfix(self.numbers, refresh=False)
        # learn() ends on a whole vector step, so a phase can pass its budget by up to
        # n_envs - 1 steps: the bar stops at its total
        self.bar.update(max(0, min(env_steps, self.bar.total - self.bar.n)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ppd train``'s flags: ``--config``, ``--out``, ``--resume`` and one flag per
    :class:`TrainConfig` field (``--device``, ``--seed``, ``--threads``, ...)."""
    from ppd.config import add_dataclass_args

    parser.add_argument("--config", default=None, help="YAML/JSON file with TrainConfig fields (flags override it)")
    parser.add_argument("--out", default="runs/ppd", help="run folder (default: runs/ppd)")
    parser.add_argument("--resume", action="store_true", help="continue OUT from its last completed round (uses OUT/config.yaml unless --config is given; "
                        "flags may change only --rounds (to at least the rounds completed), --device, --threads, --n-examples, "
                        "--save-replay-buffer and, before the label filter is trained, --filter-*: a flag that "
                        "contradicts the run is an error)")
    parser.add_argument("--data", action="append", default=None, metavar="[NAME=]SOURCE",
                        help="training data, repeatable to mix sources: a folder holding images/ and masks/, a COCO "
                        ".json, or procedural:DOMAIN (default: procedural:train)")
    parser.add_argument("--eval-data", dest="eval_data", action="append", default=None, metavar="[NAME=]SOURCE",
                        help="held-out evaluation data, repeatable (default: --eval-scenes images held out of --data "
                        "by the seed)")
    parser.add_argument("--model", dest="segmenter", default=None, metavar="NAME",
                        help="the segmenter, as in ppd bench: same as --segmenter")
    # dict fields (start_mix, coarse_kwargs) are settable in --config FILE only
    add_dataclass_args(parser, TrainConfig, skip=("start_mix", "coarse_kwargs", "data", "eval_data"))


def config_for(args: argparse.Namespace) -> tuple[TrainConfig, int]:
    """The run's configuration (defaults <- ``--config`` FILE, or with ``--resume`` the run's
    own ``config.yaml``, <- flags) and the rounds ``--resume`` finds completed (0 else)."""
    from ppd.config import build_config

    out = Path(args.out)
    config_file = args.config
    if args.resume and not config_file and (out / "config.yaml").is_file():
        config_file = str(out / "config.yaml")
    cfg = build_config(TrainConfig, args, config_file)
    done = 0
    if args.resume and config_file == str(out / "config.yaml"):
        import dataclasses

        from ppd.agents.train_config import ABSENT_MEANS
        from ppd.config import load_config_file

        saved = load_config_file(config_file)  # a field the run predates: as the run trained
        absent = {k: v for k, v in ABSENT_MEANS.items() if k not in saved and getattr(args, k, None) is None}
        cfg = dataclasses.replace(cfg, **absent)
    if args.resume:
        from ppd.agents.run_commit import read_state

        state = read_state(out)
        done = int(state["round"]) if state else 0
    return cfg, done


def interrupted_message(out: Path) -> str:
    """The line ``ppd train`` ends with when it is interrupted (Ctrl-C): what the run
    folder holds and how to continue it."""
    from ppd.agents.run_commit import read_state

    try:
        state = read_state(out)
    except ValueError:
        state = None
    if state and state["round"]:
        return (f"ppd train: interrupted; {out} holds {state['round']} completed round(s): "
                f"continue the run with `ppd train --out {out} --resume`")
    return (f"ppd train: interrupted before the first round was completed; `ppd train --out {out} --resume` "
            "starts the run again from its first round")


def run(args: argparse.Namespace) -> int:
    """``ppd train``: build the config, train with a progress bar, print a summary. An
    interrupt (Ctrl-C) ends it with one line on how to continue and exit code 130."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(interrupted_message(Path(args.out)), file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """:func:`run` without the interrupt handling."""
    from tqdm import tqdm

    from ppd.agents.train import check_resume, train
    from ppd.agents.train_data import check_sources
    from ppd.agents.train_progress import StepCallback

    out = Path(args.out)
    cfg, done = config_for(args)
    if args.resume:
        check_resume(out, cfg)  # a contradicting flag fails before the progress bar
    check_sources(cfg)  # so does a bad --data
    for role, steps in (("attacker", cfg.attacker_steps), ("defender", cfg.defender_steps)):
        if 0 < cfg.rounds * steps <= cfg.learning_starts:
            print(f"ppd train: warning: the {role} takes {cfg.rounds * steps} steps in all, not more than "
                  f"--learning-starts {cfg.learning_starts}, so its network is never updated: give it more steps "
                  "or lower --learning-starts", file=sys.stderr)
    per_round = cfg.attacker_steps + cfg.defender_steps
    stage_bars: list[Any] = []

    def stage_progress(desc: str, total: int) -> Any:
        """A tqdm bar per step of the label filter's stage (the previous one closed)."""
        for b in stage_bars:
            b.close()
        stage_bars.append(tqdm(total=total, desc=desc, dynamic_ncols=True))
        return stage_bars[-1].update

    with tqdm(total=cfg.total_steps, initial=min(done, cfg.rounds) * per_round, desc="training", unit="step", dynamic_ncols=True) as bar:
        main_bar = TrainBar(bar)
        try:
            metrics = train(cfg, out, resume=args.resume, callback=StepCallback(main_bar.steps), progress=stage_progress,
                            report=main_bar.report)
        finally:
            for b in stage_bars:
                b.close()
    final = metrics["final"]
    print(f"trained {cfg.rounds} rounds, {cfg.total_steps} env steps in {metrics['wall_time_s']:.0f} s -> {out}")
    n_eval = metrics.get("eval_images", cfg.eval_scenes)
    capped = f" (of --eval-scenes {cfg.eval_scenes}: at most half of a source is held out)" if n_eval < cfg.eval_scenes else ""
    print(f"held-out mean IoU on {n_eval} images{capped}:")
    rows = [
        ("ideal prompts", final["ideal_iou"]),
        ("ideal, attacked", final["attacked_iou"]),
        ("attacked, defended", final["defended_attacked_iou"]),
        ("coarse prompts", final["coarse_iou"]),
        ("coarse, defended", final["defended_coarse_iou"]),
        ("attacked, PromptDefender.refine", final.get("refine_attacked_iou", float("nan"))),
        ("coarse, PromptDefender.refine", final.get("refine_coarse_iou", float("nan"))),
        ("attacked, defended, where it stopped", final.get("defended_attacked_iou_last", float("nan"))),
        ("coarse, defended, where it stopped", final.get("defended_coarse_iou_last", float("nan"))),
    ]
    if "fm_iou" in final:
        rows += [("one-shot (feature matching) prompts", final["fm_iou"]), ("one-shot, defended", final["defended_fm_iou"])]
    if "fm_choice_iou" in final:
        rows.append(("one-shot, edit chooser's pick", final["fm_choice_iou"]))
    filt = metrics.get("label_filter")
    if filt:
        rows += [
            ("attacked, defended without the filter", final.get("defended_attacked_iou_nofilter", float("nan"))),
            ("coarse, defended without the filter", final.get("defended_coarse_iou_nofilter", float("nan"))),
        ]
    for name, v in rows:
        print(f"  {name:38s} {v:.3f}")
    if filt:
        verb = "relabels" if filt["action"] == "relabel" else "removes"
        state = "off (it did not help there)" if filt["threshold"] >= 1.0 else f"{verb} prompts above {filt['threshold']:.1f}"
        if filt["relabel_gate"] > 0.0:  # both writers of the metadata set it (0 for older runs)
            state += f"; the defender relabels only prompts above {filt['relabel_gate']:.1f}"
        print(f"label filter ({filt['scenes']} scenes, {filt['time_s']:.0f} s): wrong-label ROC AUC {filt['selection_auc']:.3f} "
              f"on {filt['selection_scenes']} held-out scenes; {state}")
    if final["ideal_iou"] > 0:
        print(f"the attack costs {final['ideal_iou'] - final['attacked_iou']:.3f} IoU; the defender recovers "
              f"{100 * final['defended_attacked_iou'] / final['ideal_iou']:.0f}% of the ideal IoU "
              "(against this run's attacker, whose strength varies by seed; compare runs against one attacker with "
              f"python -m ppd.bench.defense --run {out} --attacker OTHER_RUN)")
    files = [out / "defender.zip", out / "attacker.zip", out / "metrics.json", out / "examples.png"]
    if filt:
        files.append(out / "label_filter.zip")
    if metrics.get("edit_chooser"):
        files.append(out / "edit_chooser.json")
    print("files: " + ", ".join(str(f) for f in files))
    return 0
