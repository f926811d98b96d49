"""Shared output of the bench scripts: print a markdown table and keep a copy under bench/results/."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def emit_table(lines: list[str], out: str | Path) -> str:
    """Print the table made of ``lines`` and write it to ``out`` (folders created); returns the text."""
    table = "\n".join(lines)
    print(table)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(table + "\n")
    return table
