"""A training bundle: one folder that, with the working tree, is all a CUDA machine with PyTorch and no network needs
to train the variants, evaluate them and hand the weights back (``gpu_run``).

The device tool sends the working tree plus what a call carries, 64 MiB in all, so the bundle is built to the room
the tree leaves: the training pools' images re-encoded as WebP (``long_side`` px, ``quality``), taken round-robin
from the pools in a seeded order until the room is used up; the held-out coco-mini val images, re-encoded too and
marked as val only (the run evaluates on them and never trains on them); labels and a data YAML with relative paths;
the wheels the machine lacks; ``bundle.json`` (what went in) and ``run.sh``. The teacher is the committed
``weights/yolov8n.safetensors`` (an fp16 copy of ``../shared/teachers``' YOLOv8n), which travels with the tree.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import yaml

from ..weights.files import sha256_file
from .data import DEFAULT_POOLS, _images, train_pools

MIB = 1 << 20
#: The device tool's limit on what one call sends: working tree, shared/ and carried paths together.
UPLOAD_LIMIT = 64 * MIB
#: Packages the GPU machine lacks (it has torch, torchvision, timm, opencv, numpy, scipy, matplotlib, safetensors,
#: huggingface_hub): ultralytics for training, supervision and what it imports for the app's GPU path. Not polars:
#: the trainer reads its CSV without it (``StarNetTrainer.read_results_csv``) and the run makes no plots.
#: Import names; the wheels are those of the distributions installed here that provide them.
WHEELS = ("ultralytics", "thop", "supervision", "defusedxml", "deprecate")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

RUN_SH = """#!/usr/bin/env bash
# Written by `python -m starnet_demo bundle`. From the repository root, on a CUDA machine with PyTorch (no network):
#   OUT=<folder for the results> bash {rel}/run.sh [gpu_run options, e.g. --plan s3:3,s4:3 --deadline-min 9]
# Installs the bundle's wheels offline, then trains, evaluates and writes into $OUT (starnet_demo/training/gpu_run.py).
set -euo pipefail
BUNDLE=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
OUT=${{OUT:-runs/gpu-out}}
SITE=${{SITE:-/tmp/starnet-site}}
PYTHON=${{PYTHON:-python3}}
[ -d starnet_demo ] || {{ echo "run.sh: run it from the repository root" >&2; exit 2; }}
mkdir -p "$OUT"
if compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \\
    "$BUNDLE"/wheels/*.whl
  export PYTHONPATH="$SITE${{PYTHONPATH:+:$PYTHONPATH}}"
fi
export PYTHONPATH="$PWD${{PYTHONPATH:+:$PYTHONPATH}}" YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
"$PYTHON" -m starnet_demo.training.gpu_run --bundle "$BUNDLE" --out "$OUT" "$@" 2>&1 | tee "$OUT/run.log"
"""


def sent_bytes(size: int) -> int:
    """What a file of ``size`` bytes counts towards the device tool's limit: a tar member, 512 bytes of header and
    its content padded to 512. Measured: a 22.5 MiB bundle of 5,404 files beside a 40.5 MiB tree was refused (67.2
    MiB counted so), a 17.0 MiB one of 3,708 files sent (60.5 MiB)."""
    return 512 + -(-size // 512) * 512


def travelling_bytes(repo: Path) -> int:
    """What the device tool counts of ``repo``: tracked files and untracked ones git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, check=True).stdout.decode().split("\0")
    return sum(sent_bytes(p.stat().st_size) for f in files if f and (p := repo / f).is_file() and not p.is_symlink())


def _encode(src: Path, dst: Path, long_side: int, quality: int) -> int:
    """``src`` as WebP at most ``long_side`` px on its longer side; returns the bytes written."""
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {src.name}")
    scale = long_side / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dst), image, [cv2.IMWRITE_WEBP_QUALITY, quality])
    return dst.stat().st_size


def _copy_label(image: Path, split: str, pool_out: Path) -> int:
    """The YOLO label of a pool image (``images/<split>`` → ``labels/<split>``), if any; returns its bytes."""
    label = image.parent.parent.parent / "labels" / split / f"{image.stem}.txt"
    if not label.is_file():
        return 0
    dst = pool_out / "labels" / split / label.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(label, dst)
    return dst.stat().st_size


def download_wheels(folder: Path, names: tuple[str, ...] = WHEELS) -> None:
    """Wheels of the distributions that provide the modules ``names``, for CPython 3.12 on x86-64 Linux, at the
    versions installed here, without their dependencies (``pip download``, as the device README does)."""
    folder.mkdir(parents=True, exist_ok=True)
    providers = metadata.packages_distributions()
    missing = [name for name in names if name not in providers]
    if missing:
        raise RuntimeError(f"not installed here, so no version to carry: {', '.join(missing)}")
    pins = [f"{dist}=={metadata.version(dist)}" for dist in (providers[name][0] for name in names)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)), "-d",
               str(folder), *pins]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"pip could not download {', '.join(pins)} (no network? pass wheels=<folder>): "
                           f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")


def build_bundle(shared: str | Path, out: str | Path, *, repo: str | Path = ".", wheels: str | Path | None = None,
                 pools: tuple[str, ...] = DEFAULT_POOLS, long_side: int = 320, quality: int = 50,
                 val_long_side: int = 512, val_quality: int = 80, max_bytes: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Build the bundle in ``out`` from ``shared`` (holding ``datasets/``); returns its manifest (``bundle.json``).

    ``max_bytes`` is the bundle's room; by default what the upload limit leaves beside ``repo``'s travelling files,
    less 1 MiB. ``wheels`` is a folder of wheels to take instead of downloading ``WHEELS``.
    """
    shared, out, repo = Path(shared), Path(out), Path(repo)
    datasets = shared / "datasets" if (shared / "datasets").is_dir() else shared
    val_dir = datasets / "coco-mini" / "images" / "val"
    if not val_dir.is_dir():
        raise FileNotFoundError(f"{val_dir} not found: the bundle needs coco-mini's held-out val split")
    if out.exists():
        shutil.rmtree(out)
    data = out / "data"
    room = max_bytes if max_bytes is not None else UPLOAD_LIMIT - MIB - travelling_bytes(repo)

    wheel_dir = out / "wheels"
    if wheels is None:
        download_wheels(wheel_dir)
    else:
        wheel_dir.mkdir(parents=True)
        for wheel in Path(wheels).glob("*.whl"):
            shutil.copyfile(wheel, wheel_dir / wheel.name)
    used = sum(sent_bytes(p.stat().st_size) for p in wheel_dir.iterdir())

    held_out = _images(val_dir)
    for image in held_out:  # val only: evaluated on, never trained on
        used += sent_bytes(_encode(image, data / "heldout" / "images" / "val" / f"{image.stem}.webp",
                                   val_long_side, val_quality))
        used += sent_bytes(_copy_label(image, "val", data / "heldout"))

    if used > room:
        raise ValueError(f"no room for training images: wheels and held-out images take {used / MIB:.1f} MiB of "
                         f"{room / MIB:.1f} MiB")
    queues = train_pools(datasets, pools, held_out)
    for pool, images in queues:
        random.Random(f"{seed}-{pool}").shuffle(images)
    if not queues:
        raise FileNotFoundError(f"no training pools found under {datasets}")
    taken = {pool: 0 for pool, _ in queues}
    total = {pool: len(images) for pool, images in queues}
    full = False
    for i in range(max(total.values())):
        for pool, images in queues:
            if i >= len(images) or full:
                continue
            image, pool_out = images[i], data / pool
            dst = pool_out / "images" / "train" / f"{image.stem}.webp"
            size = sent_bytes(_encode(image, dst, long_side, quality)) + sent_bytes(
                _copy_label(image, "train", pool_out))
            if used + size > room - 16 * 1024:  # the manifest, run.sh and the data YAML
                dst.unlink()
                (pool_out / "labels" / "train" / f"{image.stem}.txt").unlink(missing_ok=True)
                full = True
                continue
            used += size
            taken[pool] += 1
    train = [f"{pool}/images/train" for pool, _ in queues if taken[pool]]
    names = yaml.safe_load((datasets / "coco-mini" / "data.yaml").read_text())["names"]
    # No `path:` key: ultralytics then resolves these against the YAML's own folder, wherever the bundle lands.
    (data / "data.yaml").write_text("# Written by `python -m starnet_demo bundle`; val is coco-mini's held-out split "
                                    "(evaluated on, never trained on).\n" + yaml.safe_dump(
                                        {"train": train, "val": "heldout/images/val", "nc": len(names),
                                         "names": names}, sort_keys=False))
    rel = out.resolve().relative_to(repo.resolve()) if out.resolve().is_relative_to(repo.resolve()) else out
    (out / "run.sh").write_text(RUN_SH.format(rel=rel))
    (out / "run.sh").chmod(0o755)
    teacher = shared / "teachers" / "yolov8n-coco.safetensors"
    manifest = {
        "format": "starnet-demo-bundle/1",
        "data": "data/data.yaml",
        "images": {"train": {p: f"{taken[p]} of {total[p]}" for p in taken}, "train_total": sum(taken.values()),
                   "val_held_out": len(held_out)},
        "settings": {"long_side": long_side, "quality": quality, "val_long_side": val_long_side,
                     "val_quality": val_quality, "format": "webp", "seed": seed},
        "teacher": "weights/yolov8n.safetensors (fp16 copy of the COCO-trained YOLOv8n"
                   + (f", sha256 {sha256_file(teacher)[:12]}" if teacher.is_file() else "") + ")",
        "wheels": sorted(p.name for p in wheel_dir.iterdir()),
        "room_bytes": room,
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["bytes"] = sum(sent_bytes(p.stat().st_size) for p in out.rglob("*") if p.is_file())
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
