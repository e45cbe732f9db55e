"""How many env steps per second do M batched envs (one decoder call per step) give against
M envs stepped one by one, and what is the decoder's own batching gain?

    python docs/experiments/env_step_speed.py [--n-envs 16] [--steps 200] [--role defender] [--probe] [--threads 2]

Times both sides with :func:`ppd.envs.throughput.step_throughput` (random valid actions,
auto-reset, the sides alternating in ``--rounds`` rounds; its docstring says what is
counted) and prints env steps/s, decoder calls and rows, the share of prompt states
answered without decoding, and the ratio; then the decoder alone
(:func:`ppd.envs.throughput.decoder_ceiling`: M calls of the rows one sequential env
decodes per step against one call of all of them), the ceiling of that ratio.
``--probe`` gives the defender envs removal probes, as ``ppd train`` does by default.
"""

from __future__ import annotations

import argparse
import platform

from ppd.cli.common import add_device_arguments, add_threads_argument, apply_threads
from ppd.data.scenes import ProceduralScenes
from ppd.envs.throughput import decoder_ceiling, step_throughput
from ppd.envs.world import PROMPT_PAD
from ppd.models import BUNDLED_NAME
from ppd.segmenter import load_segmenter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-envs", type=int, default=16, help="environments per side (default 16)")
    p.add_argument("--steps", type=int, default=200, help="vector steps per side (default 200)")
    p.add_argument("--role", default="defender", choices=["attacker", "defender"])
    p.add_argument("--probe", action="store_true", help="defender envs with removal probes (as ppd train's default)")
    p.add_argument("--model", default=BUNDLED_NAME)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the bundled model)")
    add_device_arguments(p)
    p.add_argument("--scenes", type=int, default=32, help="procedural training scenes (default 32)")
    p.add_argument("--rounds", type=int, default=4, help="alternations between the two sides (default 4)")
    add_threads_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-pad", type=int, default=PROMPT_PAD,
                   help=f"PromptWorld prompt_pad (default {PROMPT_PAD}; 0: none, exact SAM, one call per prompt count)")
    args = p.parse_args(argv)
    apply_threads(p, args)
    if args.probe and args.role != "defender":
        p.error("--probe is for --role defender")
    import torch

    seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                         cache_dir=args.embedding_cache)
    stats = step_throughput(seg, args.n_envs, args.steps, args.role, args.scenes, max(1, args.rounds), args.seed,
                            args.prompt_pad or None, args.probe)
    print(f"{args.n_envs} {args.role} envs, {args.steps} steps each; model {seg.name} "
          f"({seg.info.get('checkpoint')}), device {seg.device} ({seg.precision}), {torch.get_num_threads()} torch threads, "
          f"{platform.processor() or platform.machine()}; prompt_pad {args.prompt_pad or None}"
          f"{'; removal probes' if args.probe else ''}")
    print(f"{'side':12s} {'env steps':>9s} {'seconds':>8s} {'steps/s':>8s} {'episodes':>8s} "
          f"{'dec calls':>9s} {'rows':>6s} {'rows/call':>9s} {'no-decode':>9s}")
    for side, s in stats.items():
        print(f"{side:12s} {s.env_steps:9d} {s.seconds:8.2f} {s.steps_per_s:8.1f} {s.episodes:8d} "
              f"{s.decoder_calls:9d} {s.rows:6d} {s.rows / max(1, s.decoder_calls):9.1f} {100 * s.cache_share:8.1f}%")
    ratio = stats["batched"].steps_per_s / stats["sequential"].steps_per_s
    print(f"batched / sequential: {ratio:.2f}x")
    scenes = ProceduralScenes("train", args.n_envs, seed=args.seed)
    images = [scenes[i].image for i in range(args.n_envs)]
    seq = stats["sequential"]
    per_env = max(1, round(seq.rows / max(1, seq.decoder_calls)))  # K + 1 with probes
    rows_s, batch_s = decoder_ceiling(seg, images, prompt_pad=args.prompt_pad or None, rows_per_image=per_env, seed=args.seed)
    print(f"decoder alone (no env work, 8 points per row): {args.n_envs} calls of {per_env} row(s) {1000 * rows_s:.1f} ms, "
          f"one call of {args.n_envs * per_env} rows {1000 * batch_s:.1f} ms: {rows_s / batch_s:.2f}x, "
          "the ceiling of the ratio above")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
