"""The helper scripts in scripts/ that are not timed benchmarks."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(run_dir: Path, rows):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_curves_prints_each_run_and_metric_per_step(tmp_path, capsys):
    write_run(tmp_path / "a", [{"step": 100, "test/accuracy": 0.5, "val/accuracy": 0.25},
                               {"step": 200, "test/accuracy": 0.625, "val/accuracy": 0.5},
                               {"step": 250, "test/accuracy": 0.75, "val/accuracy": 0.6}])
    write_run(tmp_path / "b", [{"step": 100, "test/accuracy": 0.125}, {"step": 200, "test/accuracy": 0.875}])
    load_script("curves").main([str(tmp_path / "a"), str(tmp_path / "b"), "--every", "200"])
    lines = capsys.readouterr().out.strip().splitlines()
    # only multiples of 200 and the last step; b has no val/accuracy row and no value at step 250
    assert lines[0] == "| run | metric | 200 | 250 |"
    assert lines[2:] == ["| a | val/accuracy | 50.0 | 60.0 |",
                         "| a | test/accuracy | 62.5 | 75.0 |",
                         "| b | test/accuracy | 87.5 |  |"]
