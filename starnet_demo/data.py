"""Training data: one ultralytics dataset that merges the ground-truth and pseudo-labelled pools.

The merged dataset is a data YAML that lists several image folders under ``train`` (ultralytics finds each image's
labels by swapping ``images`` for ``labels`` in its path), with the held-out split as ``val``. Nothing is copied:
the pools' images and labels are linked into the output folder, so that ultralytics writes its label caches
(``labels/train.cache``) there and never into the read-only source pools. Images are linked one by one in a real
folder, because ultralytics resolves the dataset's folders, and a linked folder would resolve back to the pool.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_POOLS = ("coco-mini", "distill", "distill-extra")
_COCO_ID = re.compile(r"(\d{12})")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _coco_id(path: Path) -> str | None:
    m = _COCO_ID.search(path.stem)
    return m.group(1) if m else None


def _linked_split(root: Path, out: Path, pool: str, split: str) -> str:
    """``out/<pool>/images/<split>``: a folder of links to the pool's images, beside a link to its labels."""
    images = out / pool / "images" / split
    images.mkdir(parents=True, exist_ok=True)
    for old in images.iterdir():  # a rerun starts from the pool as it is now
        if old.is_symlink():
            old.unlink()
    for image in _images(root / pool / "images" / split):
        (images / image.name).symlink_to(image)
    labels, link = root / pool / "labels" / split, out / pool / "labels" / split
    if link.is_symlink():
        link.unlink()
    if labels.is_dir():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(labels, target_is_directory=True)
    return str(images)


def prepare_data(root: str | Path, out: str | Path, pools: tuple[str, ...] = DEFAULT_POOLS) -> Path:
    """Write ``out/data.yaml``: the train splits of ``pools`` under ``root`` merged, coco-mini's val held out.

    Pools that are absent are skipped (``distill-extra`` is optional). Fails if a training image shares a file name
    or a COCO id with a held-out image, so the evaluation can never see a training image.
    """
    root, out = Path(root).resolve(), Path(out).resolve()
    base = root / "coco-mini"
    base_yaml = base / "data.yaml"
    if not base_yaml.is_file():
        raise FileNotFoundError(f"{base_yaml} not found: --root must hold coco-mini (and optionally distill pools)")
    names = yaml.safe_load(base_yaml.read_text())["names"]
    val_dir = base / "images" / "val"
    held_out = _images(val_dir)
    held_names = {p.name for p in held_out}
    held_ids = {i for i in map(_coco_id, held_out) if i}

    found, counts = [], {}
    for pool in pools:
        folder = root / pool / "images" / "train"
        if not folder.is_dir():
            continue
        images = _images(folder)
        leaks = [p.name for p in images if p.name in held_names or _coco_id(p) in held_ids]
        if leaks:
            raise ValueError(f"{pool} shares {len(leaks)} image(s) with the held-out val split, e.g. {leaks[:3]}")
        found.append(pool)
        counts[pool] = len(images)
    if not found:
        raise FileNotFoundError(f"no training pools found under {root}")

    out.mkdir(parents=True, exist_ok=True)
    train_dirs = [_linked_split(root, out, pool, "train") for pool in found]
    data_yaml = out / "data.yaml"
    header = "# Merged by `python -m starnet_demo prepare-data`: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    val = _linked_split(root, out, "coco-mini", "val")
    body = yaml.safe_dump({"train": train_dirs, "val": val, "nc": len(names), "names": names}, sort_keys=False)
    data_yaml.write_text(f"{header} training images; val is coco-mini's held-out split.\n{body}")
    return data_yaml
