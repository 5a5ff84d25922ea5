"""The built wheel (not the editable checkout) ships its configs and runs from any directory."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_elsewhere(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("ssl_cli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ssl_cli/configs/train.yaml" in names
    assert "ssl_cli/configs/method/fixmatch.yaml" in names
    assert "ssl_cli/configs/hydra/job_logging/ssl.yaml" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The wheel's copy comes first on the path, so the checkout is not what runs.
    env = {**os.environ, "PYTHONPATH": str(site), "SSL_CLI_CACHE": str(tmp_path / "cache")}
    code = "import ssl_cli, sys; print(ssl_cli.__file__); sys.argv[0] = 'ssl-train'; from ssl_cli.apps.train import main; main()"
    result = subprocess.run([sys.executable, "-c", code, "debug=smoke", "hydra.run.dir=run"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].startswith(str(site))
    assert json.loads((elsewhere / "run" / "summary.json").read_text())["status"] == "completed"
