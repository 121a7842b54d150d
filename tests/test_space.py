"""``deploy-space`` through the real ``huggingface_hub`` client against the loopback Hub (``hub_server.py``), and
what a Space needs to start from exactly the files deployed.

The loopback Hub keeps the Space's type, SDK and files; it does not build or run the Space, so the last test does
what the Space's builder would, as far as it can here: it reads the deployed front matter against the deployed
requirements and this Python, then imports ``app.py`` and builds its UI from a folder holding only the deployed files.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer
from huggingface_hub import SpaceCard, constants
from packaging.specifiers import SpecifierSet

from starnet_demo.cli import main
from starnet_demo.tools.space import CPU_WHEELS, requirement, space_files

ROOT = Path(__file__).resolve().parent.parent
SPACE = "someone/starnet-space"


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "a-token-from-the-environment")
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict[str, bytes]:
    """The files of a Space deployed from this checkout."""
    with pytest.MonkeyPatch.context() as mp, HubServer() as server:
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setenv("HF_TOKEN", "t")
        mp.setenv("HF_ENDPOINT", server.url)
        assert main(["deploy-space", "--repo-id", SPACE]) == 0
        return server.files(SPACE)


def test_the_space_holds_what_the_app_needs_and_nothing_else():
    files = space_files()
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "starnet_demo").rglob("*.py")}
    assert package <= files.keys()
    weights = {p.relative_to(ROOT).as_posix() for p in (ROOT / "weights").iterdir()}
    assert weights and weights <= files.keys()
    assert {"app.py", "requirements.txt", ".gitattributes", "examples/bus.jpg", "examples/vtest.mp4",
            "docs/explain/toy.json", "docs/explain/star-vs-sum.json"} <= files.keys()
    for path in files:
        assert not path.startswith(("tests/", "experiments/", "docs/training", ".ci/", ".venv/", "runs/")), path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
    assert all(size == (ROOT / p).stat().st_size for p, size in files.items())


def test_deploy_creates_a_gradio_space_and_uploads_exactly_those_files(hub, capsys):
    assert main(["deploy-space", "--repo-id", SPACE]) == 0
    assert hub.created[SPACE]["type"] == "space" and hub.created[SPACE]["sdk"] == "gradio"
    files = hub.files(SPACE)
    assert files.keys() == {*space_files(), "README.md"}
    for path in ("app.py", "weights/s1.safetensors", "examples/vtest.mp4", "requirements.txt"):
        assert files[path] == (ROOT / path).read_bytes(), path
    assert capsys.readouterr().out.startswith(f"deployed to {hub.url}/{SPACE}/commit/")
    assert any(path.startswith(f"/api/spaces/{SPACE}/commit/") for _, path in hub.requests)

    # A second deploy leaves exactly the tree again: a file the Space held but the app no longer ships goes.
    hub.commit(SPACE, {"stale.py": b"print('old')"}, message="by hand")
    assert main(["deploy-space", "--repo-id", SPACE, "--cpu-torch", "--message", "again"]) == 0
    files = hub.files(SPACE)
    assert "stale.py" not in files and files.keys() == {*space_files(), "README.md"}
    requirements = files["requirements.txt"].decode()
    assert requirements.splitlines()[0] == CPU_WHEELS
    assert requirements.endswith((ROOT / "requirements.txt").read_text())


def test_deploy_dry_run_lists_the_files_and_uploads_nothing(hub, capsys):
    assert main(["deploy-space", "--repo-id", SPACE, "--dry-run"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(space_files()) and not hub.repos


def test_deploy_failure_and_a_token_on_the_command_line_are_one_line(hub, capsys):
    assert main(["deploy-space", "--repo-id", SPACE, "--token", "hf_secret"]) == 2
    err = capsys.readouterr().err
    assert "HF_TOKEN" in err and "hf_secret" not in err and err.count("\n") == 1 and not hub.repos
    hub.stop()
    assert main(["deploy-space", "--repo-id", SPACE]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: deploying to the Space {SPACE} at ") and err.count("\n") == 1


def test_a_space_built_from_the_deploy_would_start(deployed, tmp_path):
    """The front matter names the Gradio SDK at a version the deployed requirements allow, this Python (which the
    package supports), and an app file that was deployed; ``app.py`` then imports and builds its UI from those files
    alone, in a fresh interpreter."""
    card = SpaceCard(deployed["README.md"].decode())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and "app.py" in deployed
    for path, data in deployed.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    assert requirement("gradio", tmp_path).specifier.contains(card.data.sdk_version)
    assert card.data.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    requires = re.search(r'requires-python = "([^"]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert SpecifierSet(requires).contains(f"{card.data.python_version}.0")

    code = ("import app, starnet_demo, sys; from pathlib import Path\n"
            "assert Path(starnet_demo.__file__).is_relative_to(Path.cwd()), starnet_demo.__file__\n"
            "app.build_app(); print('built')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", STARNET_WEIGHTS_DIR=str(tmp_path / "weights"), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("built"), done.stderr[-3000:]


def test_a_gradio_outside_the_requirements_is_refused_before_any_upload(hub, monkeypatch, capsys):
    """The front matter pins the Gradio tested here; one the Space's requirements would not allow is refused."""
    monkeypatch.setattr("starnet_demo.tools.space.version", lambda name: "5.49.1")
    assert main(["deploy-space", "--repo-id", SPACE]) == 1
    err = capsys.readouterr().err
    assert "the installed gradio 5.49.1 is not what requirements.txt asks for" in err and err.count("\n") == 1
    assert not hub.repos
