"""The tutorial notebooks: each one runs top to bottom, and each is stored clean.

* ``test_notebook_runs`` executes every ``tutorials/*.ipynb`` with nbclient,
  with ``tutorials/`` as the working directory, ``MINIRAN_FAST=1`` (smaller
  images/steps, same code path) and ``MPLBACKEND=Agg``. A failing cell is
  reported with its number, its source and the traceback. Marked
  ``notebook`` (``pytest -m notebook`` runs only these; not ``slow``: CI runs them).
* ``test_notebook_is_stored_clean`` checks that a notebook is valid nbformat 4
  with the python3 kernel, has no outputs and no execution counts, and ends
  with an "Exercises" section (after a "Summary" section).
* ``test_every_solution_has_a_notebook`` checks that each
  ``tutorials/solutions/nbXX_*.py`` belongs to a notebook ``tutorials/XX_*.ipynb``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def _heading_texts(nb):
    """The text of every Markdown heading, in order (numbers like "7." stripped)."""
    texts = []
    in_fence = False
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            m = None if in_fence else HEADING.match(line)
            if m:
                texts.append(re.sub(r"^[\d.]+\s*", "", m.group(1)).strip())
    return texts


def _failure_report(path, index, cell, exc):
    lines = [f"{path.name}: cell {index} failed ({type(exc).__name__})", "", "----- cell source -----", cell.source]
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        lines += ["", "----- traceback -----"]
        for err in errors:
            lines.append(ANSI.sub("", "\n".join(err.get("traceback", []))) or f"{err.get('ename')}: {err.get('evalue')}")
    else:
        lines += ["", "----- error -----", ANSI.sub("", str(exc))]
    return "\n".join(lines)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # the kernel is a child process: it inherits these
    monkeypatch.setenv("MINIRAN_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # miniran importable from the kernel even when it is not pip-installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    start = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            try:
                client.execute_cell(cell, index)
            except Exception as exc:  # CellExecutionError, CellTimeoutError, DeadKernelError, ...
                pytest.fail(_failure_report(path, index, cell, exc), pytrace=False)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {index} has stored outputs (clear them before committing)"
            assert cell.execution_count is None, f"{path.name}: cell {index} has an execution count"
    headings = _heading_texts(nb)
    assert headings, f"{path.name}: no Markdown headings"
    assert headings[-1].lower().startswith("exercises"), (
        f"{path.name}: the last section must be 'Exercises', got {headings[-1]!r}"
    )
    assert any(h.lower().startswith("summary") for h in headings), f"{path.name}: no 'Summary' section"


def test_every_solution_has_a_notebook():
    solutions = sorted((TUTORIALS / "solutions").glob("nb*.py"))
    numbers = {p.name.split("_", 1)[0] for p in NOTEBOOKS}
    orphans = []
    for sol in solutions:
        m = re.fullmatch(r"nb(\d{2})_\w+\.py", sol.name)
        if m is None or m.group(1) not in numbers:
            orphans.append(sol.name)
    assert not orphans, f"solution files without a matching tutorials/XX_*.ipynb: {orphans}"
