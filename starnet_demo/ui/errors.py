"""What a request's failure tells its user: their fault, as written; ours, as a short id to quote.

``user_errors`` is the one place where exceptions become ``gr.Error``. The package's ``InputError`` family is the
user's fault and is shown as written. A full disk is named as such. Missing weights say how to get them. Everything
else (a ``ValueError`` from inside torch included) is a fault of ours: logged with its traceback under a short id,
and shown as a server fault with that id, never with a server path. An upload that is refused as a file, or that
a full disk cannot hold, is deleted from Gradio's cache at once (``discard_upload``).
"""

from __future__ import annotations

import errno
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import gradio as gr

from ..errors import InputError, UploadError
from ..weights.files import WeightsError

log = logging.getLogger("app")

DISK_FULL = ("The server's disk is full, so this request could not be finished; nothing of it was kept. Please try "
             "again later.")
NO_WEIGHTS = ("This model's weights are not available on this server (the reason is in its log); pick another model. "
              "Whoever runs the server can add them: the repository's weights/ folder holds the released ones, and "
              "the app pulls its pinned Hub release when the Hub is reachable (see the README).")


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


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from, is ENOSPC (PyAV's and Pillow's included)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


def server_fault(error: BaseException) -> gr.Error:
    """Log ``error`` with its traceback under a new short id; the ``gr.Error`` that quotes the id."""
    ref = uuid.uuid4().hex[:8]
    log.error("request failed [%s]", ref, exc_info=error)
    return gr.Error(f"The request failed on the server, not because of your input (error {ref}); it was logged. "
                    f"Please quote {ref} if you report it.")


@contextmanager
def user_errors(*uploads) -> Iterator[None]:
    """Turn every failure inside the block into a ``gr.Error`` that tells the truth (see the module).

    ``uploads`` (raw file payloads) are deleted from Gradio's cache at once when they are refused as files, or when
    the disk is full: they cannot be used, and a public app should not keep them until the cache sweep. An upload
    refused for its settings stays, for a retry with other settings.
    """
    try:
        yield
    except gr.Error:
        raise
    except InputError as e:
        if isinstance(e, UploadError):
            for upload in uploads:
                discard_upload(upload)
        raise gr.Error(str(e)) from None
    except WeightsError as e:
        log.error("weights unavailable: %s", e)
        raise gr.Error(NO_WEIGHTS) from None
    except Exception as e:
        if disk_full(e):
            log.error("disk full: %s", e)
            for upload in uploads:
                discard_upload(upload)
            raise gr.Error(DISK_FULL) from None
        raise server_fault(e) from None


def route_failed(request, error: OSError):
    """FastAPI's handler for an ``OSError`` in Gradio's own routes, before any handler runs: an upload that fills the
    disk gets ``DISK_FULL`` (HTTP 507) instead of a bare 500, and its partial file is removed; any other is a logged
    fault with an id.

    Gradio writes an upload in progress as a temporary file at the top of its cache (finished ones sit in folders),
    so on ENOSPC the top-level files go: an upload running alongside would fail on the full disk anyway.
    """
    from starlette.responses import PlainTextResponse

    if not disk_full(error):
        return PlainTextResponse(server_fault(error).message, status_code=500)
    log.error("disk full during %s: %s", request.url.path, error)
    cache = Path(gr.utils.get_upload_folder())
    for partial in cache.iterdir() if cache.is_dir() else ():
        with suppress(OSError):
            if partial.is_file() and not partial.is_symlink():
                partial.unlink()
    return PlainTextResponse(DISK_FULL, status_code=507)
