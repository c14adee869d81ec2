"""`mkviz grade`: run course notebooks and report their exercise checks (mkviz.exercises).

    mkviz grade student/01_charts_and_the_manifold_key.ipynb ...     a student's notebooks, as handed in
    mkviz grade --solutions notebooks/0*.ipynb                       the course's own solutions, put in place

Each notebook is executed top to bottom in a fresh kernel (its folder as the working directory; the kernel
inherits the environment, so `MKVIZ_SMALL=1 mkviz grade ...` grades at the small scale), then the results of
every `check(...)` it ran are read back. An exercise cell is a code cell whose first line is
`# ✎ exercise NAME`; with `--solutions` each one is replaced by the cell with the same first line in
`notebooks/solutions/<notebook>.py`. Prints one line per exercise, the cells that raised an error (a student's
notebook runs on past them), and a total per notebook; the exit status is 0 when every check of every
notebook passed, 1 otherwise.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence
import copy
from ..core.checks import ArgumentParser

__all__ = ["MARKER", "GradeReport", "exercise_cells", "grade", "main", "solutions_for", "with_solutions"]

MARKER = re.compile(r"^# ✎ exercise (\S+)\s*$")
RESULTS_TAG = "mkviz-exercise-results:"
_REPORT_CELL = ("import json as _json, mkviz.exercises as _exercises\n"
                f"print({RESULTS_TAG!r}, _json.dumps(_exercises.results()))")


def exercise_cells(nb: Any) -> dict[str, int]:
    """{exercise name: index of its code cell} of a notebook (nbformat or jupytext notebook)."""
    found = {}
    for i, cell in enumerate(nb.cells):
        m = MARKER.match(cell.source.split("\n", 1)[0]) if cell.cell_type == "code" else None
        if m:
            if m.group(1) in found:
                raise ValueError(f"exercise {m.group(1)!r} appears twice (cells {found[m.group(1)]} and {i})")
            found[m.group(1)] = i
    return found


def solutions_for(notebook: Path) -> Path:
    """notebooks/solutions/<stem>.py next to a course notebook."""
    return Path(notebook).parent / "solutions" / f"{Path(notebook).stem}.py"


def with_solutions(nb: Any, solutions: Path) -> Any:
    """A copy of `nb` with every exercise cell replaced by its solution cell from the py:percent file."""

    import jupytext

    solved, answers = copy.deepcopy(nb), jupytext.read(solutions)
    wanted, given = exercise_cells(solved), exercise_cells(answers)
    if set(wanted) != set(given):
        raise ValueError(f"{solutions}: solutions for {sorted(given)}, but the notebook has exercises {sorted(wanted)}")
    for name, i in wanted.items():
        solved.cells[i].source = answers.cells[given[name]].source
    return solved


@dataclass(frozen=True)
class GradeReport:
    statuses: dict[str, str]   # exercise name -> "pass" | "fail" | "not attempted"
    errors: list[str]          # "cell N: ExceptionName: message" for every cell that raised

    @property
    def passed(self) -> int:
        return sum(state == "pass" for state in self.statuses.values())


def grade(notebook: Path, solutions: bool = False, timeout: int = 900) -> GradeReport:
    """Execute a notebook (with its solutions in place if asked) and read back its checks; every exercise of
    the notebook is listed (one whose check never ran counts as "not attempted"). A student's notebook runs
    on past a cell that raises (its error is reported); with `solutions` any error stops the run and raises."""
    import nbformat
    from nbclient import NotebookClient

    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    if solutions:
        nb = with_solutions(nb, solutions_for(notebook))
    nb.cells.append(nbformat.v4.new_code_cell(_REPORT_CELL))
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=not solutions,
                   resources={"metadata": {"path": str(notebook.parent.resolve())}}).execute()
    text = "".join(out.get("text", "") for out in nb.cells[-1].outputs if out.get("name") == "stdout")
    reported = json.loads(text.split(RESULTS_TAG, 1)[1]) if RESULTS_TAG in text else {}
    errors = [f"cell {i}: {out.get('ename')}: {out.get('evalue')}" for i, cell in enumerate(nb.cells)
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    return GradeReport({name: reported.get(name, "not attempted") for name in exercise_cells(nb)} | reported, errors)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="mkviz grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help=".ipynb files to run and grade")
    parser.add_argument("--solutions", action="store_true",
                        help="put the solutions of notebooks/solutions/ in place first (checks the solutions)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default: %(default)s)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if p.suffix != ".ipynb" or not p.is_file()]
    if missing:
        raise ValueError(f"`notebooks` must be existing .ipynb files, got {missing}")
    all_passed = True
    for path in args.notebooks:
        report = grade(path, solutions=args.solutions, timeout=args.timeout)
        for name, state in report.statuses.items():
            print(f"  {state:<14} {name}")
        for error in report.errors:
            print(f"  error          {error}")
        print(f"{path.name}: {report.passed}/{len(report.statuses)} exercises pass"
              + (f" ({len(report.errors)} cells raised an error)" if report.errors else ""))
        all_passed &= report.passed == len(report.statuses)
    return 0 if all_passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
