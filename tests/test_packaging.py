"""The package installs and runs outside the checkout: every subpackage is shipped and the model configs are
generated, not read from files beside the code."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


# ---------------------------------------------------------------- what the requirement files declare
def requirements(name: str) -> dict[str, Requirement]:
    """``{canonical name: requirement}`` of a requirements file's own lines (not those it includes with ``-r``)."""
    lines = (line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-")]
    return {canonicalize_name(r.name): r for r in reqs}


#: Requirements of the app that no module imports, and why they are there.
USED_INDIRECTLY = {"onnx": "ultralytics' ONNX export", "onnxslim": "ultralytics' ONNX export",
                   "lap": "ultralytics' ByteTrack", "torchvision": "timm and ultralytics, at a build matching torch"}


def imported_modules(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"starnet_demo", "__future__"}


def test_every_import_is_declared_and_every_requirement_used():
    """Each third-party module that the package or ``app.py`` imports comes from a distribution named in
    ``requirements.txt`` (the app) or ``requirements-train.txt`` (training, int8, benchmarks), and each line of
    ``requirements.txt`` is imported or has a stated reason."""
    app, train = requirements("requirements.txt"), requirements("requirements-train.txt")
    distributions = importlib.metadata.packages_distributions()
    used = set()
    for module in sorted(imported_modules([ROOT / "app.py", *(ROOT / "starnet_demo").rglob("*.py")])):
        provided_by = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert provided_by & (app.keys() | train.keys()), f"{module} (from {provided_by}) is not declared"
        used |= provided_by
    assert app.keys() - used - USED_INDIRECTLY.keys() == set()
    unbounded = [str(r) for r in app.values() if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert unbounded == ["packaging>=23"]  # packaging keeps its API across majors; everything else has a ceiling
    assert app["av"].specifier.contains("14.2") and not app["av"].specifier.contains("14.1")  # supervision's floor


def test_the_extras_restate_the_requirement_files():
    """pyproject's extras are requirements-train.txt and requirements-test.txt without their ``-r`` lines (which
    setuptools cannot read), and the test file includes the training file, which includes the app's."""
    text = (ROOT / "pyproject.toml").read_text()
    extras = {name: ast.literal_eval(value) for name, value in
              re.findall(r"^(train|test) = (\[.*\])$", text.split("[project.optional-dependencies]")[1], re.M)}
    for extra, name in (("train", "requirements-train.txt"), ("test", "requirements-test.txt")):
        assert [str(Requirement(r)) for r in extras[extra]] == [str(r) for r in requirements(name).values()]
    assert "-r requirements.txt" in (ROOT / "requirements-train.txt").read_text().splitlines()
    assert "-r requirements-train.txt" in (ROOT / "requirements-test.txt").read_text().splitlines()


def test_the_cv2_that_loads_is_the_headless_one():
    """ultralytics comes as ``ultralytics-opencv-headless``, so no ``opencv-python`` (Qt, libGL) is installed beside
    the headless build to shadow it, and importing cv2 maps no libGL (which a Space's image lacks)."""
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("opencv-python")
    code = "import cv2, ultralytics; print(any('libGL' in line for line in open('/proc/self/maps')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_every_tracked_binary_goes_through_lfs():
    """What the Hub refuses unless LFS/Xet tracks it: binary files, and anything over 10 MB."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [p for p in tracked.decode().split("\0") if p and (ROOT / p).is_file()]
    binary = [p for p in paths if b"\0" in (ROOT / p).read_bytes()[:8000] or (ROOT / p).stat().st_size > 1_000_000]
    assert any(p.endswith(".safetensors") for p in binary)
    attrs = subprocess.run(["git", "check-attr", "filter", "--", *binary], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [line for line in attrs if not line.endswith(": filter: lfs")] == []


def test_the_readme_shows_the_deploy_and_detect_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for command in ("python -m starnet_demo deploy-space --repo-id", "python -m starnet_demo detect ",
                    "pip install -r requirements.txt", "download.pytorch.org/whl/cpu"):
        assert command in readme, command
