"""The ``ppd`` command line: one module per command, each with ``HELP``,
``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> exit code``.

Library code logs; the command modules own progress bars and printed output. Only the
command being run is imported, so ``ppd --help`` answers without loading torch,
Stable-Baselines3 or a model.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ppd.cli.common import add_threads_argument, apply_threads

#: command name -> (module, one-line help). The module is imported only when the
#: command runs or its own ``--help`` is asked for.
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("ppd.cli.segment", "segment one image from point prompts"),
    "pretrain": ("ppd.cli.pretrain", "train the small SAM2 model on procedural scenes"),
    "train": ("ppd.cli.train", "adversarial attacker/defender DQN training"),
    "train-ruac": ("ppd.cli.train_ruac", "train the RUAC Bayesian mask decoder (pixel uncertainty) on a frozen SAM2"),
    "refine": ("ppd.cli.refine", "refine a prompt set with a trained defender"),
    "demo": ("ppd.cli.demo", "segment procedural scenes with the bundled model"),
    "bench": ("ppd.cli.bench", "benchmark models on datasets under protocols, with a report"),
}


def _command_in(argv: list[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), if any."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ppd`` parser. Only the command named in ``argv`` gets its flags (and its
    module imported); with ``argv`` None every command does."""
    parser = argparse.ArgumentParser(prog="ppd", description="Point prompts for SAM2, made better by reinforcement learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_in(argv) if argv is not None else None
    for name, (module_name, help_text) in COMMANDS.items():
        if argv is not None and name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(p)
        if not any(a.dest == "threads" for a in p._actions):  # pretrain, train, train-ruac: a config field
            add_threads_argument(p)
        p.set_defaults(func=module.run, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    apply_threads(args.parser, args)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # bad input, an --out that is a file or not writable, a full disk ...
        print(f"ppd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ppd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        import yaml

        if isinstance(exc, yaml.YAMLError):  # a --config file that is not YAML
            print(f"ppd {args.command}: error: the config file is not valid YAML: {' '.join(str(exc).split())}",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
