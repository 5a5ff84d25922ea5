"""Markdown tables: the one helper every report, benchmark and docs generator writes them with."""

from __future__ import annotations

from typing import Iterable, List, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A GitHub-flavoured markdown table. `align` has one letter per column: l (default) or r."""
    header = [str(h) for h in header]
    lines: List[str] = ["| " + " | ".join(header) + " |"]
    marks = [("---:" if (align[i:i + 1] == "r") else "---") for i in range(len(header))]
    lines.append("|" + "|".join(marks) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"
