"""``python -m starnet_demo detect``: the app's image and video detection over files, folders and globs.

Each image gets an annotated copy and each video an annotated H.264 mp4 (``inference.video.detect_video``, the Video
tab's pipeline, without the app's upload limits), drawn by ``viz.annotate``; every detection goes into one CSV and
one JSON file through supervision's sinks (``media.sinks.DetectionFiles``), each row naming its source file and
frame. A source that cannot be read is told in one line and skipped; the run carries on and says so at the end.
"""

from __future__ import annotations

import glob
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm
from ultralytics.data.utils import IMG_FORMATS, VID_FORMATS

from ..errors import InputError
from ..inference.detector import get_detector
from ..inference.settings import Settings, class_ids
from ..inference.video import detect_video
from ..media.images import read_image
from ..media.sinks import DetectionFiles
from ..viz.annotate import DetectionAnnotator

#: The app's limits on uploaded videos do not apply to the user's own files (``detect_video`` needs a finite length).
NO_LIMIT = {"max_seconds": 1e9, "max_bytes": math.inf, "max_side": math.inf}
#: Annotated images keep their format where Pillow writes it; others become PNG.
KEPT_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Report:
    """What a run did: files written per source, and one line per source it could not use."""

    out: Path
    images: int = 0
    videos: int = 0
    detections: int = 0
    done: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = (f"{self.images} image(s) and {self.videos} video(s), {self.detections} detections: annotated files "
                f"and {', '.join(Path(t).name for t in self.tables)} in {self.out}")
        if self.failed:
            line += f"; {len(self.failed)} source(s) skipped"
        return line


def kind(path: Path) -> str | None:
    """``image``, ``video`` or None, by suffix (ultralytics' own lists of formats)."""
    suffix = path.suffix.lower().lstrip(".")
    return "image" if suffix in IMG_FORMATS else "video" if suffix in VID_FORMATS else None


def expand(sources: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The files to process, in order and each once: files as given, a folder's images and videos (not its
    subfolders), a glob's matches (``**`` reaches into subfolders). Also one line per source that gives nothing."""
    files: dict[Path, None] = {}
    problems = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            files[path] = None
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and kind(p))
            files.update(dict.fromkeys(found))
            if not found:
                problems.append(f"{source}: no images or videos in this folder")
        elif glob.has_magic(source):
            found = sorted(Path(p) for p in glob.glob(source, recursive=True) if kind(Path(p)) and Path(p).is_file())
            files.update(dict.fromkeys(found))
            if not found:
                problems.append(f"{source}: matches no images or videos")
        else:
            problems.append(f"{source}: no such file or folder")
    return list(files), problems


def _output(out: Path, source: Path, suffix: str, taken: set[str]) -> Path:
    """``out/<stem><suffix>``, numbered when two sources share a name."""
    name, n = f"{source.stem}{suffix}", 1
    while name in taken:
        name, n = f"{source.stem}-{n}{suffix}", n + 1
    taken.add(name)
    return out / name


def run(sources: Sequence[str], settings: Settings, runtime: str = "auto", *, classes: Sequence[str] | None = None,
        out: str | Path = "runs/detect") -> Report:
    """Detect objects in every image and video of ``sources`` with the app's ``settings``; write into ``out``."""
    files, problems = expand(sources)
    out = Path(out)
    report = Report(out, failed=list(problems))
    for line in problems:
        print(f"skipped {line}", file=sys.stderr)
    if not files:
        return report
    detector = get_detector(settings.variant, device=settings.device, runtime=runtime, imgsz=settings.imgsz)
    wanted = class_ids(detector.names, list(classes) if classes else None)
    out.mkdir(parents=True, exist_ok=True)
    taken = {"detections.csv", "detections.json"}
    with DetectionFiles(out / "detections.csv", out / "detections.json") as sink, \
            tqdm(files, unit="file", desc="detect", file=sys.stderr) as bar:
        report.tables = sink.paths
        for path in bar:
            bar.set_postfix_str(path.name[-40:])
            try:
                if kind(path) == "video":
                    n = _video(path, detector, settings, wanted, _output(out, path, ".mp4", taken), sink, bar)
                    report.videos += 1
                else:
                    n = _image(path, detector, settings, wanted, out, sink, taken)
                    report.images += 1
            except (InputError, OSError) as e:
                line = f"{path}: {e}"
                report.failed.append(line)
                bar.write(f"skipped {line}", file=sys.stderr)
                continue
            report.detections += n
            report.done.append(path)
    return report


def _image(path: Path, detector, settings: Settings, wanted: list[int] | None, out: Path, sink: DetectionFiles,
           taken: set[str]) -> int:
    rgb = read_image(path)
    detections, _ = detector.detect(rgb, conf=settings.conf, iou=settings.iou, imgsz=settings.imgsz, classes=wanted)
    suffix = path.suffix.lower() if path.suffix.lower() in KEPT_SUFFIXES else ".png"
    Image.fromarray(DetectionAnnotator().annotate(rgb, detections)).save(_output(out, path, suffix, taken))
    sink.append(detections, source=path.name, frame=0)
    return len(detections)


def _video(path: Path, detector, settings: Settings, wanted: list[int] | None, target: Path, sink: DetectionFiles,
           bar: tqdm) -> int:
    count = 0

    def on_frame(detections, index: int) -> None:
        nonlocal count
        count += len(detections)
        sink.append(detections, source=path.name, frame=index)

    def progress(fraction: float, desc: str | None = None) -> None:
        bar.set_postfix_str(f"{path.name[-30:]} {fraction:.0%}")

    detect_video(path, detector, target, conf=settings.conf, iou=settings.iou, imgsz=settings.imgsz, classes=wanted,
                 annotate=DetectionAnnotator(rgb=False).annotate, progress=progress, on_frame=on_frame, **NO_LIMIT)
    return count
