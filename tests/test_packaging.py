"""The package installs and runs outside the checkout: every subpackage is shipped and the model configs are
generated, not read from files beside the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_installed_package_runs_info_outside_the_checkout(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"  # a copy: the build leaves build/ and egg-info behind
    shutil.copytree(ROOT / "starnet_demo", source / "starnet_demo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(source)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "starnet_demo", "info", "--variants", "s1,yolov8n"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:]}
    assert rows["s1"] == ["2.68M", "4.79M", "12.86"] and rows["yolov8n"][-1] == "8.86"
    assert (tmp_path / "cache" / "starnet_demo" / "cfg" / "yolov8n-starnet-s1.yaml").is_file()
