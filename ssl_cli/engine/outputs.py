"""The files a run writes into its directory, and writing them atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

LAST, BEST = "last.pt", "best.pt"
STAGES = "stages.json"  # the config of a run made of several stages (method=selfsup)
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
# Files that mark a directory as holding a run worth keeping.
RUN_FILES = (LAST, BEST, METRICS, STAGES)


def write_json(path: Path, content) -> None:
    """Writes next to `path`, then renames: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2))
    os.replace(tmp, path)


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(Path(run_dir) / SUMMARY, summary)
