"""Pulling weights from the Hugging Face Hub: a pinned release, verified, falling back to ``weights/``.

Trust: a pulled ``.safetensors`` must match the sha256 in this checkout's ``weights/<variant>.json`` when that exists
(those hashes ship in git with the code that pins the release), else the sha256 in the pulled config. Anything else
is refused and removed from the cache. Only tensors are ever loaded (``weights.load_weights``): nothing is unpickled.

``huggingface_hub`` does the transport and the cache; ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read at each call,
so they can change after import. A server asks through ``locate``: one probe of the Hub per model per process (with
a short timeout), its outcome logged on the server, the weights hashed once; the user hears only a plain notice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

from .files import WeightsError, read_config, sha256_file, verify, weight_files
from .files import local_dir as default_local_dir

log = logging.getLogger(__name__)

DEFAULT_REPO = "starnet-demo/yolov8-starnet"
# The weights release this code was tested with: a tag (``publish --tag``) or a commit id. The sha256 in
# ``weights/*.json`` is what is trusted, so a moved tag cannot swap the bytes; bump this with those files.
HUB_REVISION = "v1"

# Everything a Hub request can fail with when the Hub is down, blocked, offline or lacks the file. Not a plain OSError:
# a local disk error (full, unreadable HF cache) is ours to report as such, never as "Hub unreachable".
_HUB_ERRORS = (httpx.HTTPError, HfHubHTTPError, OfflineModeIsEnabled, EntryNotFoundError)
#: How long the one probe may wait for the Hub before the app serves the weights it ships.
PROBE_TIMEOUT_S = 3.0
#: What a user is told when the pinned release could not be used (the reason goes to the server log).
SHIPPED_NOTICE = "the Hub release could not be used; using the weights shipped with the app"


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
    reason: str | None = None  # why not the Hub, one line for the server log; None when the pinned release was used
    sha256: str | None = None  # the tensors' sha256 where it was verified here (a pulled release)

    @property
    def notice(self) -> str | None:
        """One plain line for the user, naming no path; None when the pinned Hub release was used."""
        return SHIPPED_NOTICE if self.source == "local" else None


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
        path, online, sha256 = _pull(variant, repo_id, revision, trusted, cache_dir)
        return Resolved(path, "hub" if online else "cache", sha256=sha256)
    except (_HubUnavailable, WeightsError) as e:
        reason = str(e)
    if not (local_config.is_file() and local_tensors.is_file()):
        raise WeightsError(f"no weights for {variant}: {reason}, and the app ships none; publish them to the Hub "
                           f"repo, or put {variant}.safetensors and {variant}.json in the weights folder "
                           "(STARNET_WEIGHTS_DIR)")
    return Resolved(local_config, "local", reason)


@dataclass(frozen=True)
class Located:
    """A model's weights as a server uses them: found, verified (hashed once), their record read once."""

    variant: str
    tensors: Path
    config: dict[str, Any] = field(hash=False, compare=False)
    sha256: str
    source: Literal["hub", "cache", "local"]
    notice: str | None = None  # the plain line for the user (no path); None when the pinned release was used


_located: OrderedDict[tuple, Located] = OrderedDict()
_located_lock = threading.Lock()
_LOCATED_MAX = 32


def _locate_key(variant: str) -> tuple:
    """What ``locate``'s answer depends on: the Hub settings, the HF cache, and the shipped files' identity."""
    tensors, config = weight_files(variant)
    stamps = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None for p in (tensors, config))
    return (variant, hub_repo(), hub_revision(), _endpoint(), _offline(), constants.HF_HUB_CACHE, str(tensors),
            stamps)


def locate(variant: str) -> Located:
    """The variant's weights for serving, once per process (again only when the settings or shipped files change):
    ``resolve`` (one Hub probe), then the sha256 checked and the record read. The outcome is logged on the server;
    ``Located.notice`` is the plain line a user may see. Raises ``WeightsError`` when there are none."""
    key = _locate_key(variant)
    with _located_lock:
        if key in _located:
            _located.move_to_end(key)
            return _located[key]
    resolved = resolve(variant)
    if resolved.sha256:  # a pulled release, hashed as it was verified
        config = read_config(resolved.path)
        tensors, sha256 = resolved.path.with_name(config["file"]), resolved.sha256
    else:
        config, tensors, sha256 = verify(resolved.path)
    found = Located(variant, tensors, config, sha256, resolved.source, resolved.notice)
    if resolved.reason:
        log.warning("%s: %s; using the shipped weights %s", variant, resolved.reason, resolved.path)
    else:
        log.info("%s: the pinned Hub release (%s)", variant, resolved.source)
    with _located_lock:
        _located[key] = found
        while len(_located) > _LOCATED_MAX:
            _located.popitem(last=False)
    return found


def forget_located() -> None:
    """Locate every model afresh on next use (tests; after weights were replaced in place)."""
    with _located_lock:
        _located.clear()


def resolve_weights(variant: str, repo_id: str | None = None, revision: str | None = None,
                    local_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """``resolve(…).path``, logging the fallback notice (one line) as a warning."""
    resolved = resolve(variant, repo_id, revision, local_dir, cache_dir)
    if resolved.reason:
        log.warning("%s; using local weights %s", resolved.reason, resolved.path)
    return resolved.path


def _pull(variant: str, repo_id: str, revision: str, trusted_sha256: str | None,
          cache_dir: str | Path | None) -> tuple[Path, bool, str]:
    """Download (or take from the cache) the variant's config and tensors, and verify them.

    Returns the config path, whether the Hub was reached (False: taken from the cache) and the tensors' sha256.
    """
    where = f"{repo_id}@{revision}"
    endpoint = _endpoint()
    offline, reason = _offline(), f"Hub offline (HF_HUB_OFFLINE) and {variant} of {where} not in the HF cache"
    if not offline:
        # One quick probe without retries: hf_hub_download retries an unreachable Hub for ~20 s before it fails.
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, f"{variant}.json", revision=revision, endpoint=endpoint),
                                 timeout=PROBE_TIMEOUT_S, endpoint=endpoint)
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
    return config_path, not offline, _verify(variant, config_path, tensors_path, trusted_sha256, where)


def _verify(variant: str, config_path: Path, tensors_path: Path, trusted_sha256: str | None, where: str) -> str:
    """Refuse (and drop from the cache) a download that is not exactly the release's tensors in safetensors; returns
    the sha256 it checked."""
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
        return got
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
