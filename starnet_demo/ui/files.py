"""Files the app hands to Gradio, and uploads it refuses: results are written by us and swept after a while,
refused uploads are deleted from Gradio's cache at once."""

from __future__ import annotations

import atexit
import functools
import os
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

OUTPUT_KEEP_S = 300  # results are copied into Gradio's cache when returned; our files go after this long


def upload_path(value) -> str | None:
    """The file path in what a file component sends raw (a payload dict) or in a plain path; None if there is none."""
    if isinstance(value, dict):
        value = value.get("path")
    return value if isinstance(value, (str, Path)) and str(value) else None


def discard_upload(value) -> None:
    """Delete an uploaded file (and its folder, if now empty) if it lies in Gradio's upload cache; else nothing."""
    path = upload_path(value)
    if path is None:
        return
    path, cache = Path(path).resolve(), Path(gr.utils.get_upload_folder()).resolve()
    if cache in path.parents and path.is_file():
        path.unlink(missing_ok=True)
        with suppress(OSError):
            path.parent.rmdir()


@lru_cache(maxsize=1)
def output_dir() -> Path:
    """This process's folder for results (annotated videos and images), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="starnet-demo-outputs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def sweep_outputs(older_than_s: float = OUTPUT_KEEP_S) -> None:
    """Delete results Gradio has long since copied into its own cache."""
    now = time.time()
    for p in output_dir().iterdir():
        with suppress(FileNotFoundError):  # a concurrent request's sweep got there first
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()


def as_file(image: np.ndarray) -> str:
    """An RGB image as a WebP file of ours (what Gradio would have made of the array)."""
    path = output_path(".webp")
    PIL.Image.fromarray(image).save(path)
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
