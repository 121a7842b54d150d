"""Files the app writes and hands to Gradio: results are swept after a while, so is Gradio's cache, and a dead
process's results and Gradio files are swept at the next start. (Refused uploads are deleted at once:
``errors.user_errors``.)"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from contextlib import suppress
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image

from ..weights.files import WeightsError, read_config, weight_files
from .errors import user_errors

log = logging.getLogger(__name__)

# Results are copied into Gradio's cache when returned; our own files go after this long, and so do Gradio's copies
# and uploads (``GRADIO_CACHE``, Blocks' ``delete_cache``): under load the files on disk stay at about the request
# rate times this age, instead of growing for as long as the server runs. A sweep every 10 s keeps the count within a
# few percent of that (every 30 s, a saw of 9 %), and reaches it within 4 minutes of a change in load.
OUTPUT_KEEP_S = 240
OUTPUT_NAME = re.compile(r"[0-9a-f]{32}(?:\.mp4|\.webp|-detections\.csv|-detections\.json)")  # output_path's
GRADIO_CACHE = (10, OUTPUT_KEEP_S)  # (sweep every, delete older than), in seconds
OUTPUTS_PREFIX = "starnet-demo-outputs-"  # then the process id: a folder whose process is gone is swept
GRADIO_PREFIX = "starnet-demo-gradio-"  # likewise, for Gradio's uploads and copies (``gradio_cache_dir``)
_GRADIO_DIRS: set[Path] = set()  # the Gradio folders this process made


@lru_cache(maxsize=1)
def output_dir() -> Path:
    """This process's folder for results (annotated videos and images, detections), removed at exit.

    Named by the process id, so that the folders of processes killed before their exit handler ran (``kill -9``,
    a crash) are recognised and removed the first time a later process asks for its own.
    """
    sweep_dead_outputs()
    path = Path(tempfile.gettempdir()) / f"{OUTPUTS_PREFIX}{os.getpid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def sweep_dead_outputs() -> list[Path]:
    """Remove the results folders of processes that no longer run; returns what was removed."""
    return _sweep_dead(Path(tempfile.gettempdir()), OUTPUTS_PREFIX)


def gradio_cache_dir() -> Path:
    """This process's folder inside Gradio's upload cache (``$GRADIO_TEMP_DIR``, else the temporary folder's
    ``gradio``), named by the process id and made Gradio's ``GRADIO_TEMP_DIR``; call it before building the Blocks.

    Gradio names its files by their content and forgets them when its process is killed (``kill -9``, out of memory),
    so the uploads of a video cut short stayed for good; a folder per process lets the next start remove the folders
    of processes that are gone, as ``output_dir`` does for results. A live one's are never touched.
    """
    current = Path(gr.utils.get_upload_folder())
    if current.name == f"{GRADIO_PREFIX}{os.getpid()}":
        return current
    if current.name.startswith(GRADIO_PREFIX):  # inherited from a parent process that serves its own app
        current = current.parent
    _sweep_dead(current, GRADIO_PREFIX)
    path = current / f"{GRADIO_PREFIX}{os.getpid()}"
    if path not in _GRADIO_DIRS:  # one already there is a dead process's that had our id (a container restarted)
        shutil.rmtree(path, ignore_errors=True)
        _GRADIO_DIRS.add(path)
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    return path


def keep_gradio_sweeping() -> None:
    """Make Gradio's cache sweep (``delete_cache``) survive a race. It iterates the live sets of files Gradio recorded
    while request threads add to them, and the first "Set changed size during iteration" ends its scheduled task for
    the rest of the server's life: in a 10-minute soak Gradio's cache grew from then on. Wrapped, a race costs one
    round; the next, 30 s later, deletes what it missed."""
    from gradio import route_utils

    sweep = route_utils.delete_files_created_by_app
    if getattr(sweep, "keeps_sweeping", False):
        return

    @functools.wraps(sweep)
    def tolerant(blocks: gr.Blocks, age: int | None) -> None:
        try:
            sweep(blocks, age)
        except RuntimeError as e:
            log.info("Gradio's cache sweep raced a request (%s); it goes on next round", e)

    tolerant.keeps_sweeping = True  # type: ignore[attr-defined]
    route_utils.delete_files_created_by_app = tolerant  # both its callers look it up there at each call


def _sweep_dead(parent: Path, prefix: str) -> list[Path]:
    """Remove ``parent``'s ``<prefix><pid>`` folders whose process no longer runs; returns what was removed."""
    removed = []
    for folder in parent.glob(f"{prefix}*"):
        pid = folder.name.removeprefix(prefix)
        if folder.is_dir() and (not pid.isdigit() or not _alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_outputs(older_than_s: float = OUTPUT_KEEP_S) -> None:
    """Delete results Gradio has long since copied into its own cache, Gradio's copies of them, and the empty
    folders Gradio's own sweep (which deletes files only) leaves in its cache, one per file it ever stored.

    Gradio's ``delete_cache`` removes only the files it records, and it does not record the copies of files that a
    generator handler (the video) returns; those keep our names (``output_path``), so they are found by name.
    """
    now = time.time()
    for p in output_dir().iterdir():
        with suppress(FileNotFoundError):  # a concurrent request's sweep got there first
            if now - p.lstat().st_mtime >= older_than_s:
                p.unlink()
    cache = Path(gr.utils.get_upload_folder())
    for folder in cache.iterdir() if cache.is_dir() else ():
        with suppress(OSError):  # gone, or not a folder: either way not ours to remove now
            if not folder.is_dir():
                continue
            old = now - folder.stat().st_mtime >= older_than_s
            for f in folder.iterdir():
                if OUTPUT_NAME.fullmatch(f.name) and now - f.lstat().st_mtime >= older_than_s:
                    f.unlink()
                    old = True
            if old and not any(folder.iterdir()):
                folder.rmdir()


def as_file(image: np.ndarray) -> str:
    """An RGB image as a WebP file of ours (what Gradio would have made of the array)."""
    path = output_path(".webp")
    try:
        PIL.Image.fromarray(image).save(path)
    except BaseException:  # a disk that filled up part way leaves no half file
        path.unlink(missing_ok=True)
        raise
    return str(path)


def file_outputs(fn):
    """``fn`` with the images it returns (arrays, and gallery items of arrays) written to files first.

    Gradio caches a returned array by rewriting, in place, a file named by the image's hash, so concurrent requests
    with the same result (same image and settings) truncate each other's downloads; the load test hit this at two
    concurrent requests. A returned file is copied into the cache atomically instead.
    """
    def files(value):
        if isinstance(value, np.ndarray) and value.ndim == 3:
            return as_file(value)
        if isinstance(value, list) and value and all(isinstance(v, tuple) and isinstance(v[0], np.ndarray)
                                                     for v in value):
            return [(as_file(image), caption) for image, caption in value]
        return value

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        sweep_outputs()
        with user_errors():  # what fails after the handler's own checks (writing its files) tells the truth too
            return tuple(files(v) for v in fn(*args, **kwargs))

    return handler


def output_path(suffix: str) -> Path:
    """A new file name in ``output_dir()`` for a result the handler writes itself (a video, a CSV)."""
    return output_dir() / f"{uuid.uuid4().hex}{suffix}"


def use_examples_cache_of_these_weights() -> None:
    """Lazily cached example outputs belong to the weights that made them: one cache folder per S1 weights file,
    so retrained weights never show old boxes. An explicit ``GRADIO_EXAMPLES_CACHE`` wins."""
    try:
        digest = read_config(weight_files("s1")[1]).get("sha256", "")[:12]
    except WeightsError:
        digest = "none"
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(Path(".gradio", "cached_examples", f"s1-{digest}")))
