"""The `mkviz` command: `mkviz demo | bench | train ...`; each subcommand is a module's `main(argv)`.

A subcommand's module is imported by name when it runs (`COMMANDS`), so that `mkviz --help` and
`mkviz --version` answer without loading torch."""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from .. import __version__
from ..core.checks import run_command

COMMANDS = {
    "demo": ("mkviz.apps.demo", "run the main job: models, attention pictures and a report"),
    "bench": ("mkviz.apps.bench", "benchmarks against timm's baseline (speed, parameters, FLOPs; `bench record`: "
                             "the cost of recording attention)"),
    "train": ("mkviz.training.command", "train or fine-tune a baseline or manifold-key model"),
    "sweep": ("mkviz.studies.sweep", "train a sweep of runs from a YAML file (resumable) and write its report"),
    "grade": ("mkviz.course.grading", "run course notebooks and report their exercise checks (--solutions: the "
                               "course's own solutions)"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
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
    return run_command(argv[0], module.main, argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
