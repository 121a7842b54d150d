"""Publishing weights to the Hugging Face Hub: the upload folder (tensors, configs, a model card) and one commit,
tagged as the release that ``weights.hub.HUB_REVISION`` pins."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData

from ..weights.files import WeightsError, read_config, sha256_file, weight_files
from ..weights.files import local_dir as default_local_dir
from ..weights.hub import _HUB_ERRORS, DEFAULT_REPO, _endpoint, _one_line


class PublishError(RuntimeError):
    """An upload the Hub refused or could not receive; the message is one line."""


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
from starnet_demo.weights.hub import resolve_weights
from starnet_demo.weights.files import load_weights

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
