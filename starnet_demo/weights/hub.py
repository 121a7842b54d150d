"""Pulling weights from the Hugging Face Hub: a pinned release, verified, falling back to ``weights/``.

Trust: a pulled ``.safetensors`` must match the sha256 in this checkout's ``weights/<variant>.json`` when that exists
(those hashes ship in git with the code that pins the release), else the sha256 in the pulled config. Anything else
is refused and removed from the cache. Only tensors are ever loaded (``weights.load_weights``): nothing is unpickled.

``huggingface_hub`` does the transport and the cache; ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read at each call,
so they can change after import.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import (
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import httpx
from safetensors import SafetensorError, safe_open

from .files import WeightsError, read_config, sha256_file, weight_files
from .files import local_dir as default_local_dir

log = logging.getLogger(__name__)

DEFAULT_REPO = "starnet-demo/yolov8-starnet"
# The weights release this code was tested with: a tag (``publish --tag``) or a commit id. The sha256 in
# ``weights/*.json`` is what is trusted, so a moved tag cannot swap the bytes; bump this with those files.
HUB_REVISION = "v1"

# Everything a Hub request can fail with when the Hub is down, blocked, offline or lacks the file.
_HUB_ERRORS = (httpx.HTTPError, HfHubHTTPError, OfflineModeIsEnabled, EntryNotFoundError, OSError)


def hub_repo() -> str:
    """The weights repo: ``$STARNET_HUB_REPO``, else ``DEFAULT_REPO``."""
    return os.environ.get("STARNET_HUB_REPO") or DEFAULT_REPO


def hub_revision() -> str:
    """The pinned release: ``$STARNET_HUB_REVISION``, else ``HUB_REVISION``."""
    return os.environ.get("STARNET_HUB_REVISION") or HUB_REVISION


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _offline() -> bool:
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


class _HubUnavailable(Exception):
    """The Hub copy cannot be had (offline, unreachable, not there); the message is one line for the user."""


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass(frozen=True)
class Resolved:
    """Weights ready for ``weights.load_weights(path)``, where they came from, and why not the Hub if not."""

    path: Path
    source: Literal["hub", "cache", "local"]  # "cache": the pinned release from the HF cache, the Hub not asked
    notice: str | None = None  # one line for a UI warning; None when the pinned Hub release was used


def resolve(variant: str, repo_id: str | None = None, revision: str | None = None,
            local_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Resolved:
    """The variant's weights from the pinned Hub release (via the HF cache), else from ``local_dir``.

    Raises ``WeightsError`` only when neither source has usable weights.
    """
    repo_id, revision = repo_id or hub_repo(), revision or hub_revision()
    local = Path(local_dir) if local_dir else default_local_dir()
    local_tensors, local_config = weight_files(variant, local)
    try:
        trusted = read_config(local_config).get("sha256") if local_config.is_file() else None
        path, online = _pull(variant, repo_id, revision, trusted, cache_dir)
        return Resolved(path, "hub" if online else "cache")
    except (_HubUnavailable, WeightsError) as e:
        reason = str(e)
    if not (local_config.is_file() and local_tensors.is_file()):
        raise WeightsError(f"no weights for {variant}: {reason}; and none in {local}")
    return Resolved(local_config, "local", f"{reason}; using local weights {local_config}")


def resolve_weights(variant: str, repo_id: str | None = None, revision: str | None = None,
                    local_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """``resolve(…).path``, logging the fallback notice (one line) as a warning."""
    resolved = resolve(variant, repo_id, revision, local_dir, cache_dir)
    if resolved.notice:
        log.warning(resolved.notice)
    return resolved.path


def _pull(variant: str, repo_id: str, revision: str, trusted_sha256: str | None,
          cache_dir: str | Path | None) -> tuple[Path, bool]:
    """Download (or take from the cache) the variant's config and tensors, and verify them.

    Returns the config path and whether the Hub was reached (False: taken from the cache).
    """
    where = f"{repo_id}@{revision}"
    endpoint = _endpoint()
    offline, reason = _offline(), f"Hub offline (HF_HUB_OFFLINE) and {variant} of {where} not in the HF cache"
    if not offline:
        # One quick probe without retries: hf_hub_download retries an unreachable Hub for ~20 s before it fails.
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, f"{variant}.json", revision=revision, endpoint=endpoint),
                                 timeout=constants.HF_HUB_ETAG_TIMEOUT, endpoint=endpoint)
        except RepositoryNotFoundError:
            offline, reason = True, f"Hub repo {repo_id} not found at {endpoint}"
        except RevisionNotFoundError:
            offline, reason = True, f"revision {revision} not found in Hub repo {repo_id}"
        except EntryNotFoundError:
            offline, reason = True, f"{variant}.json not in Hub repo {where}"
        except _HUB_ERRORS as e:
            offline, reason = True, f"Hub unreachable at {endpoint} ({_one_line(e)})"
    try:
        config_path, tensors_path = [
            Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                                 local_files_only=offline))
            for name in (f"{variant}.json", f"{variant}.safetensors")]
    except _HUB_ERRORS as e:
        failure = reason if offline else f"download of {variant} from {where} failed ({_one_line(e)})"
        raise _HubUnavailable(failure) from None
    _verify(variant, config_path, tensors_path, trusted_sha256, where)
    return config_path, not offline


def _verify(variant: str, config_path: Path, tensors_path: Path, trusted_sha256: str | None, where: str) -> None:
    """Refuse (and drop from the cache) a download that is not exactly the release's tensors in safetensors."""
    try:
        config, problem = read_config(config_path), None
    except WeightsError as e:
        config, problem = {}, f"its config is unusable ({e})"
    got = sha256_file(tensors_path)
    want = trusted_sha256 or config.get("sha256")
    anchor = "this checkout's weights config" if trusted_sha256 else "its config"
    if problem:
        pass
    elif config.get("variant") != variant or config.get("file") != tensors_path.name:
        problem = f"its config describes {config.get('variant')}/{config.get('file')}"
    elif got != want:
        problem = f"sha256 {got[:12]}… is not the {str(want)[:12]}… in {anchor}"
    elif got != config.get("sha256"):
        problem = f"its config's sha256 differs from {anchor}"
    elif not _is_safetensors(tensors_path):
        problem = "it is not a safetensors file"
    else:
        return
    # Drop the bad files so that a fixed release is downloaded again instead of these being reused.
    for path in (config_path, tensors_path):
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
    raise WeightsError(f"the Hub copy of {variant} ({where}) is refused as corrupt or tampered: {problem}")


def _is_safetensors(path: Path) -> bool:
    """Whether the file parses as safetensors (header only); a pickle never does."""
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except (SafetensorError, OSError):
        return False
