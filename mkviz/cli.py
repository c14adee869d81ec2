"""The `mkviz` command: `mkviz demo | bench | train ...`; each subcommand is a module's `main(argv)`."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

COMMANDS = {
    "demo": ("mkviz.demo", "run the main job: models, attention pictures and a report"),
    "bench": ("mkviz.bench", "benchmarks against timm's baseline (speed, parameters, FLOPs; `bench record`: "
                             "the cost of recording attention)"),
    "train": ("mkviz.train", "train or fine-tune a baseline or manifold-key model"),
    "sweep": ("mkviz.sweep", "train a sweep of runs from a YAML file (resumable) and write its report"),
    "grade": ("mkviz.grading", "run course notebooks and report their exercise checks (--solutions: the "
                               "course's own solutions)"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are raised as ValueError, so that `main` prints them as one line (not usage +
    error): every subcommand builds its parser from this class."""

    def error(self, message: str) -> None:
        raise ValueError(message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from . import __version__
        print(f"mkviz {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: mkviz [--version] COMMAND [ARGS]   (mkviz COMMAND --help: its options)", "", "commands:"]
        lines += [f"  {name:<7} {help_}" for name, (_, help_) in COMMANDS.items()]
        known = argv and argv[0] not in ("-h", "--help")
        print(("mkviz: unknown command " + repr(argv[0]) + "\n\n" if known else "") + "\n".join(lines),
              file=sys.stderr if known else sys.stdout)
        return 2 if known else 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        return int(module.main(argv[1:]) or 0)
    except (ValueError, OSError) as err:  # bad input (or a folder that cannot be written): one clear line
        print(f"mkviz {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
