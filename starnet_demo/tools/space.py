"""Deploying the app as a Hugging Face Space: one commit holding what the app needs and nothing else.

The Space gets ``app.py``, the package, the weights, the examples, the data files the app reads at run time
(``docs/explain``, ``docs/bench``), the app's own ``requirements.txt`` and ``.gitattributes``, and the README with
front matter for the Python and Gradio that run here (``sdk_version`` is the installed Gradio's). Files the Space
held before and this deploy does not ship are deleted in the same commit, so the Space is exactly this tree.
The token is ``$HF_TOKEN`` or the saved login, as everywhere in ``huggingface_hub``.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, SpaceCard
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError
from huggingface_hub.utils import (
    filter_repo_objects,
    httpx,  # the client's own transport (httpx2 in huggingface_hub 2)
)
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
APP_FILE = "app.py"
#: What the Space needs (``filter_repo_objects`` patterns: ``*`` matches across folders).
SHIPPED = (APP_FILE, "requirements.txt", "packages.txt", ".gitattributes", "starnet_demo/*.py",
           "weights/*.safetensors", "weights/*.json", "examples/*", "docs/explain/*.json", "docs/bench/*.json",
           "docs/*.jpg")
IGNORED = ("*/__pycache__/*", "*.pyc")
#: With ``cpu_torch``: PyTorch's CPU wheels (no CUDA libraries: about 4.6 GB less to install on CPU hardware).
CPU_WHEELS = "--extra-index-url https://download.pytorch.org/whl/cpu"


class DeployError(RuntimeError):
    """A deploy that cannot be made or that the Hub refused; the message is one line."""


def space_files(root: str | Path = ROOT) -> dict[str, int]:
    """``{path in the Space: size in bytes}`` of the files from ``root`` that a deploy uploads, sorted."""
    root = Path(root)
    tops = {pattern.split("/")[0] for pattern in SHIPPED}
    found = [p for top in sorted(tops) if (root / top).exists()
             for p in ([root / top] if (root / top).is_file() else sorted((root / top).rglob("*"))) if p.is_file()]
    rel = [p.relative_to(root).as_posix() for p in found]
    return {p: (root / p).stat().st_size for p in filter_repo_objects(rel, allow_patterns=list(SHIPPED),
                                                                       ignore_patterns=list(IGNORED))}


def requirement(name: str, root: str | Path = ROOT) -> Requirement | None:
    """The line of ``requirements.txt`` that names ``name``, parsed."""
    for line in (Path(root) / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            if req.name.lower() == name.lower():
                return req
    return None


def space_card(root: str | Path = ROOT) -> SpaceCard:
    """The project's README with front matter for this deploy: the Gradio SDK at the installed Gradio's version,
    this Python, and ``app.py``; refused if the installed Gradio is outside ``requirements.txt``'s range."""
    readme = Path(root) / "README.md"
    card = SpaceCard.load(readme)
    gradio = version("gradio")
    wanted = requirement("gradio", root)
    if wanted is None or not wanted.specifier.contains(gradio, prereleases=True):
        raise DeployError(f"the installed gradio {gradio} is not what requirements.txt asks for ({wanted}): the "
                          "Space would run another version than the one tested here")
    card.data.sdk, card.data.sdk_version, card.data.app_file = "gradio", gradio, APP_FILE
    card.data.python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return card


def deploy(repo_id: str, root: str | Path = ROOT, *, private: bool = False, commit_message: str | None = None,
           cpu_torch: bool = False) -> str:
    """Create the Space ``repo_id`` (Gradio SDK) if needed and make it hold exactly the app; returns the commit URL."""
    root = Path(root)
    files = space_files(root)
    if APP_FILE not in files:
        raise DeployError(f"no {APP_FILE} under {root}: deploy-space runs from a checkout of the project")
    generated = {"README.md": str(space_card(root)).encode()}
    if cpu_torch:
        generated["requirements.txt"] = f"{CPU_WHEELS}\n{(root / 'requirements.txt').read_text()}".encode()
    ops: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(root / p)) for p in files if p not in generated]
    ops += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in generated.items()]
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        try:
            held = api.list_repo_files(repo_id, repo_type="space")
        except RevisionNotFoundError:  # a Space with no commit yet
            held = []
        shipped = {op.path_in_repo for op in ops}
        ops += [CommitOperationDelete(path_in_repo=p) for p in held if p not in shipped]
        commit = api.create_commit(repo_id, ops, repo_type="space",
                                   commit_message=commit_message or f"Deploy the app ({len(shipped)} files)")
    except (HfHubHTTPError, httpx.HTTPError, OSError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DeployError(f"deploying to the Space {repo_id} at {api.endpoint} failed ({reason})") from None
    return commit.commit_url
