"""`python -m mkviz.training` (and the old `python -m mkviz.train`): `mkviz train`."""
import sys

from ..core.checks import run_command
from .command import main

raise SystemExit(run_command("train", main, sys.argv[1:]))
