"""The package's one convention for bad input: one clear line, a ValueError naming the argument.

`check_choice` is the check every module uses for a string option; `ArgumentParser` makes every command
line (`mkviz train`, `mkviz sweep`, ...) follow the same convention, and `run_command` prints such an error
(or an OSError) as one line, `mkviz COMMAND: error: ...`, with exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence

__all__ = ["check_choice", "ArgumentParser", "run_command"]


def check_choice(name: str, value: Any, allowed: Sequence[str], ignore_case: bool = False) -> str:
    """`value` if it is one of `allowed` (with ignore_case: compared and returned in lower case), else a
    ValueError: "`name` must be one of 'a', 'b'; got 'x'"."""
    key = value.lower() if ignore_case and isinstance(value, str) else value
    if not isinstance(value, str) or key not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return key


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are raised as ValueError, so that `run_command` prints them as one line (not
    usage + error): every subcommand builds its parser from this class."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def run_command(name: str, main: Callable[[Optional[Sequence[str]]], Any], argv: Sequence[str]) -> int:
    """`main(argv)`'s exit status; bad input (or a folder that cannot be written) printed as one clear line."""
    try:
        return int(main(list(argv)) or 0)
    except (ValueError, OSError) as err:
        print(f"mkviz {name}: error: {err}", file=sys.stderr)
        return 2
