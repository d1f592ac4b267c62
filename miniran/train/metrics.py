"""A run's ``metrics.jsonl``: one JSON object per finished epoch.

Appends go through :func:`miniran._io.append_line` (the whole line in one
``os.write`` on an ``O_APPEND`` file, then ``fsync``), rewrites through
:func:`miniran._io.atomic_write`. A crash or a full disk can therefore only
ever cut the *last* line short; :func:`read_metrics` skips such a torn tail
with a warning that names the file and the line, and keeps the rest.
"""

from __future__ import annotations

import json
import os
import sys

from miniran._io import append_line, atomic_write

__all__ = ["append_metrics", "read_metrics", "write_metrics"]


def _warn(message):
    print(message, file=sys.stderr)


def read_metrics(path, warn=None) -> list[dict]:
    """The rows of ``path`` (``[]`` when it does not exist).

    A damaged last line is skipped and reported through ``warn`` (default: a
    line on stderr). A damaged line before the last one is not a torn write:
    it raises a ValueError naming the file and the line.
    """
    warn = _warn if warn is None else warn
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = [(i + 1, raw) for i, raw in enumerate(f.read().split(b"\n")) if raw.strip()]
    rows = []
    for n, (lineno, raw) in enumerate(lines):
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict) or not {"epoch", "step"} <= row.keys():
                raise ValueError("not a JSON object with 'epoch' and 'step'")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if n == len(lines) - 1:
                warn(f"warning: {path} line {lineno} is incomplete (a write cut short?); it is ignored, "
                     f"the {len(rows)} line(s) before it are kept")
                break
            raise ValueError(f"{path} line {lineno} is damaged ({exc}); fix or delete that line") from exc
        rows.append(row)
    return rows


def write_metrics(path, rows) -> None:
    """Replace the file by ``rows``, atomically (no ``.tmp`` is left if it fails)."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(row) + "\n" for row in rows)), mode="w")


def append_metrics(path, row) -> None:
    """Append one row as one line, never torn."""
    append_line(path, json.dumps(row))
