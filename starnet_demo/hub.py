"""The weights' Hugging Face Hub side: pull a pinned release (falling back to ``weights/``), and publish one.

Trust: a pulled ``.safetensors`` must match the sha256 in this checkout's ``weights/<variant>.json`` when that exists
(those hashes ship in git with the code that pins the release), else the sha256 in the pulled config. Anything else
is refused and removed from the cache. Only tensors are ever loaded (``weights.load_weights``): nothing is unpickled.

``huggingface_hub`` does the transport and the cache; ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read at each call,
so they can change after import.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import (
    CommitInfo,
    HfApi,
    ModelCard,
    ModelCardData,
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

from . import VARIANTS
from .weights import WeightsError, read_config, sha256_file, weight_files
from .weights import local_dir as default_local_dir

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


class PublishError(RuntimeError):
    """An upload the Hub refused or could not receive; the message is one line."""


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


# --- publishing -------------------------------------------------------------------------------------------------

CARD_TEMPLATE = """---
{{ card_data }}
---

# YOLOv8-StarNet

YOLOv8n detectors whose backbone is StarNet ("Rewrite the Stars", Ma et al., CVPR 2024): timm's StarNet feeds
YOLOv8n's neck and head through 1×1 adapters, on unmodified ultralytics.

Each variant is a `safetensors` file plus a JSON config (variant, class names, image size, recipe, metrics, sha256).
No pickles: loading builds the model from the package's YAML and reads tensors only.

| variant | file | classes | dtype | imgsz | sha256 |
|---|---|---|---|---|---|
{% for f in files -%}
| {{ f.variant }} | `{{ f.file }}` | {{ f.nc }} | {{ f.dtype }} | {{ f.imgsz }} | `{{ f.sha256 }}` |
{% endfor %}
## Metrics

{{ metrics_table }}

## Training recipe

{% for v, steps in recipes.items() -%}
### {{ v }}

{{ steps }}

{% endfor -%}
## Use

With the project's code (the `starnet_demo` package) installed:

```bash
python -m starnet_demo eval --variant {{ files[0].variant }} --data path/to/data.yaml --repo-id {{ repo_id }}
```

```python
from starnet_demo.hub import resolve_weights
from starnet_demo.weights import load_weights

model, config = load_weights(resolve_weights("{{ files[0].variant }}", repo_id="{{ repo_id }}"))
```

## Intended use

Demonstrating and studying star-operation backbones in a real-time detector: the Gradio demo, CPU latency
comparisons, visualising what the star product responds to, and a starting point for fine-tuning on your own data.

## Limits

- Trained on a small set: a COCO subset with ground truth plus images pseudo-labelled by a COCO-trained YOLOv8n
  teacher. Accuracy is below YOLOv8n's; see the metrics above, measured on a small held-out split (noisy figures).
- Pseudo-labels carry the teacher's mistakes and biases, and classes that are rare in the data are detected poorly.
- Not for safety-critical use, nor for identifying or tracking people.

## Licence

AGPL-3.0, like ultralytics on which the models run.
"""

_METRIC_NAMES = {"map50": "mAP50", "map50_se": "mAP50 s.e.", "map50_95": "mAP50-95",
                 "map50_95_se": "mAP50-95 s.e.", "precision": "precision", "recall": "recall"}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def _metrics_table(configs: dict[str, dict[str, Any]]) -> str:
    """One row per variant, one column per scalar in the configs' ``metrics`` (mAP first)."""
    rows = {v: {k: x for k, x in (c.get("metrics") or {}).items() if isinstance(x, (int, float, str))}
            for v, c in configs.items()}
    keys = [k for k in _METRIC_NAMES if any(k in r for r in rows.values())]
    keys += sorted({k for r in rows.values() for k in r} - set(keys))
    if not keys:
        return "Not evaluated yet."
    header = "| variant | " + " | ".join(_METRIC_NAMES.get(k, k) for k in keys) + " |"
    lines = [header, "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([v, *(_cell(r[k]) if k in r else "–" for k in keys)]) + " |" for v, r in rows.items()]
    return "\n".join(lines)


def _recipe(steps: Any) -> str:
    if not steps:
        return "Not recorded."
    if not isinstance(steps, list):
        return _cell(steps)
    return "\n".join(f"{i}. " + (f"**{s.get('stage', 'step')}**: " + "; ".join(
        f"{k}: {_cell(x)}" for k, x in s.items() if k != "stage") if isinstance(s, dict) else _cell(s))
                     for i, s in enumerate(steps, 1))


def model_card(configs: dict[str, dict[str, Any]], repo_id: str = DEFAULT_REPO) -> ModelCard:
    """The README of a weights repo holding these variants' configs (``{variant: config}``)."""
    data = ModelCardData(license="agpl-3.0", library_name="ultralytics", pipeline_tag="object-detection",
                         tags=["yolov8", "starnet", "object-detection", "knowledge-distillation", "safetensors"])
    files = [{"variant": v, **{k: c.get(k, "–") for k in ("file", "nc", "dtype", "imgsz", "sha256")}}
             for v, c in configs.items()]
    return ModelCard.from_template(data, template_str=CARD_TEMPLATE, files=files, repo_id=repo_id,
                                   metrics_table=_metrics_table(configs),
                                   recipes={v: _recipe(c.get("recipe")) for v, c in configs.items()})


def available_variants(weights_dir: str | Path | None = None) -> list[str]:
    """Variants that have a config in ``weights_dir`` (default ``weights.local_dir()``), in ``VARIANTS`` order."""
    folder = Path(weights_dir) if weights_dir else default_local_dir()
    return [v for v in VARIANTS if (folder / f"{v}.json").is_file()]


def build_upload_folder(variants: str | Sequence[str], weights_dir: str | Path | None, out_dir: str | Path,
                        repo_id: str = DEFAULT_REPO) -> Path:
    """Fill ``out_dir`` (new or empty) with exactly what gets uploaded: tensors and config per variant, ``README.md``.

    Weights whose file does not match their config's sha256 are refused rather than published.
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    if not variants:
        raise WeightsError(f"no weights to publish in {weights_dir or default_local_dir()}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: the upload folder must hold exactly what is published")
    out.mkdir(parents=True, exist_ok=True)
    configs = {}
    for v in variants:
        tensors, config_path = weight_files(v, weights_dir)
        config = read_config(config_path)
        if not tensors.is_file():
            raise WeightsError(f"weights file not found: {tensors}")
        if config.get("variant") != v or config.get("file") != tensors.name or sha256_file(tensors) != config.get(
                "sha256"):
            raise WeightsError(f"{tensors} does not match its config {config_path}: not publishing it")
        shutil.copyfile(tensors, out / tensors.name)
        shutil.copyfile(config_path, out / config_path.name)
        configs[v] = config
    model_card(configs, repo_id).save(out / "README.md")
    return out


def publish(repo_id: str, variants: str | Sequence[str], weights_dir: str | Path | None = None, *,
            tag: str | None = None, commit_message: str | None = None, token: str | None = None,
            private: bool = False) -> CommitInfo:
    """Upload the variants' weights, configs and model card to ``repo_id`` (created if needed) in one commit.

    ``tag`` names the commit as a release that ``HUB_REVISION`` can pin. Returns the commit (a str: its URL; ``.oid``).
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    api = HfApi(endpoint=_endpoint(), token=token)
    with tempfile.TemporaryDirectory(prefix="starnet-publish-") as tmp:
        folder = build_upload_folder(variants, weights_dir, tmp, repo_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder,
                                       commit_message=commit_message or f"Weights {', '.join(variants)}")
            if tag:
                api.create_tag(repo_id, tag=tag, revision=commit.oid)
        except _HUB_ERRORS as e:
            raise PublishError(f"publishing to {repo_id} at {api.endpoint} failed ({_one_line(e)})") from None
    return commit
