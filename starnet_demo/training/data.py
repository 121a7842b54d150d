"""Training data: one ultralytics dataset that merges the ground-truth and pseudo-labelled pools.

The merged dataset is a data YAML that lists several image folders under ``train`` (ultralytics finds each image's
labels by swapping ``images`` for ``labels`` in its path), with the held-out split as ``val``. Nothing is copied:
the pools' images and labels are linked into the output folder, so that ultralytics writes its label caches
(``labels/train.cache``) there and never into the read-only source pools. Images are linked one by one in a real
folder, because ultralytics resolves the dataset's folders, and a linked folder would resolve back to the pool.

``held_out_view`` does the same for validating on any data YAML: its val split is linked into a temporary folder,
so that ``labels/val.cache`` goes there too.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml
from ultralytics.data.utils import check_det_dataset, img2label_paths

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_POOLS = ("coco-mini", "distill", "distill-extra", "distill-more")
_COCO_ID = re.compile(r"(\d{12})")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _coco_id(path: Path) -> str | None:
    m = _COCO_ID.search(path.stem)
    return m.group(1) if m else None


def held_out_leaks(images: list[Path], held_out: list[Path]) -> list[str]:
    """Names of ``images`` that are held-out images too: the same file name or the same COCO id."""
    names = {p.name for p in held_out}
    ids = {i for i in map(_coco_id, held_out) if i}
    return [p.name for p in images if p.name in names or _coco_id(p) in ids]


def _labels_of(images: Path) -> Path:
    """The folder where ultralytics looks for the labels of the images in ``images``."""
    return Path(img2label_paths([str(images / "x.jpg")])[0]).parent


def _link_split(source: Path, images: Path) -> str:
    """``images``: a real folder of links to ``source``'s images, and beside it (``images`` → ``labels``) a link to
    their labels folder, which may be ``source`` itself."""
    images.mkdir(parents=True, exist_ok=True)
    for old in images.iterdir():  # a rerun starts from the pool as it is now
        if old.is_symlink():
            old.unlink()
    for image in _images(source):
        (images / image.name).symlink_to(image)
    labels, link = _labels_of(source), _labels_of(images)
    if link.is_symlink():
        link.unlink()
    if labels.is_dir():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(labels, target_is_directory=True)
    return str(images)


def train_pools(root: Path, pools: tuple[str, ...], held_out: list[Path]) -> list[tuple[str, list[Path]]]:
    """The train images of each pool under ``root`` that exists, in ``pools`` order; fails if any shares a file name
    or a COCO id with a held-out image, so the evaluation can never see a training image."""
    found = []
    for pool in pools:
        folder = root / pool / "images" / "train"
        if not folder.is_dir():
            continue
        images = _images(folder)
        if leaks := held_out_leaks(images, held_out):
            raise ValueError(f"{pool} shares {len(leaks)} image(s) with the held-out val split, e.g. {leaks[:3]}")
        found.append((pool, images))
    return found


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

    counts = {pool: len(images) for pool, images in train_pools(root, pools, held_out)}
    found = list(counts)
    if not found:
        raise FileNotFoundError(f"no training pools found under {root}")

    out.mkdir(parents=True, exist_ok=True)
    train_dirs = [_link_split(root / pool / "images" / "train", out / pool / "images" / "train") for pool in found]
    data_yaml = out / "data.yaml"
    header = "# Merged by `python -m starnet_demo prepare-data`: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    val = _link_split(val_dir, out / "coco-mini" / "images" / "val")
    body = yaml.safe_dump({"train": train_dirs, "val": val, "nc": len(names), "names": names}, sort_keys=False)
    data_yaml.write_text(f"{header} training images; val is coco-mini's held-out split.\n{body}")
    return data_yaml


@contextlib.contextmanager
def held_out_view(data: str | Path) -> Iterator[str]:
    """``data`` as a data YAML whose val folders are linked into a temporary folder, for validating without writing
    into the dataset: ultralytics writes a label cache beside the labels, and the held-out split may be shared
    (``../shared``) or read-only. Val entries that are not folders (image lists) are passed on unchanged."""
    info = check_det_dataset(str(data))
    with tempfile.TemporaryDirectory(prefix="starnet-val-") as tmp:
        vals = info["val"] if isinstance(info["val"], list) else [info["val"]]
        linked = [_link_split(Path(v), Path(tmp) / str(i) / "images" / "val") if Path(v).is_dir() else str(v)
                  for i, v in enumerate(vals)]
        view = Path(tmp) / "data.yaml"
        view.write_text(yaml.safe_dump({"train": info["train"], "val": linked, "nc": info["nc"],
                                        "names": info["names"]}, sort_keys=False))
        yield str(view)
