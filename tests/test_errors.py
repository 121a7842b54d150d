"""Errors that tell the truth: the user's faults as written, ours as a logged fault with an id to quote, a full disk
named, missing weights explained, never a server path; and no results or uploads left behind by a process killed
mid-run."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
import torch
from app_support import BUS, boxy_weights, serve, server_env, wait_for, write_video
from gradio_client import Client, handle_file

from starnet_demo.errors import InputError
from starnet_demo.media.images import ImageError, read_image
from starnet_demo.tools.loadtest import serve_app
from starnet_demo.ui import files
from starnet_demo.ui.errors import DISK_FULL, NO_WEIGHTS, disk_full, user_errors
from starnet_demo.weights.files import WeightsError


@pytest.fixture
def upload(tmp_path, monkeypatch) -> Path:
    """A file in a Gradio upload cache of its own, as Gradio stores an upload."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    path = tmp_path / "gradio" / "0123abcd" / "photo.jpg"
    path.parent.mkdir(parents=True)
    path.write_text("not a picture")
    return path


def raised(block) -> str:
    with pytest.raises(gr.Error) as info:
        block()
    return info.value.message


def test_the_users_fault_is_shown_as_written_and_a_refused_file_is_deleted(upload):
    def bad_file():
        with user_errors({"path": str(upload)}):
            read_image(upload)

    assert raised(bad_file) == "photo.jpg is not an image that can be read (corrupt, or not an image file)"
    assert not upload.exists() and not upload.parent.exists()
    assert issubclass(ImageError, InputError) and issubclass(InputError, ValueError)


def test_a_bad_setting_keeps_the_upload_for_a_retry(upload):
    def bad_setting():
        with user_errors({"path": str(upload)}):
            raise InputError("confidence must be a number from 0 to 1, got 7")

    assert raised(bad_setting) == "confidence must be a number from 0 to 1, got 7"
    assert upload.exists()


def test_a_value_error_from_inside_torch_is_our_fault_logged_with_an_id(caplog):
    def value_error_in_torch():
        with user_errors():
            torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.zeros(3).long())  # a ValueError

    def runtime_error_in_torch():
        with user_errors():
            torch.zeros(2, 3) @ torch.zeros(2, 3)

    with caplog.at_level(logging.ERROR, logger="app"):
        for block in (value_error_in_torch, runtime_error_in_torch):
            message = raised(block)
            ref = re.fullmatch(r"The request failed on the server, not because of your input \(error ([0-9a-f]{8})\); "
                               r"it was logged\. Please quote \1 if you report it\.", message)
            assert ref, message
            record = next(r for r in caplog.records if ref.group(1) in r.getMessage())
            assert record.exc_info is not None  # the traceback is in the log
    assert "Expected input batch_size (2) to match target batch_size (3)" in caplog.text


def test_a_full_disk_is_named_and_the_upload_is_not_kept(upload, tmp_path):
    full = tmp_path / "full"
    full.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk

    def write():
        with user_errors({"path": str(upload)}), open(full, "wb") as f:
            f.write(b"x" * 2**16)
            f.flush()

    assert raised(write) == DISK_FULL
    assert not upload.exists()
    wrapped = RuntimeError("video encoding failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full(wrapped) and not disk_full(OSError(errno.EACCES, "Permission denied"))


def test_missing_weights_say_how_to_get_them_without_a_path(caplog):
    def missing():
        with user_errors():
            raise WeightsError("no weights for s2: the Hub is unreachable; and none in /srv/app/weights")

    message = raised(missing)
    assert message == NO_WEIGHTS and "/" not in message.replace("weights/ folder", "")
    assert "none in /srv/app/weights" in caplog.text  # the details stay in the server's log


KILLED = """
import os, signal
from starnet_demo.ui import files
(files.output_dir() / "partial.mp4").write_bytes(b"half a video")
print(files.output_dir(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_results_of_a_process_killed_mid_run_are_swept_at_the_next_start():
    done = subprocess.run([sys.executable, "-c", KILLED], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = Path(done.stdout.strip())
    assert left.parent == Path(tempfile.gettempdir()) and (left / "partial.mp4").is_file()
    assert left in files.sweep_dead_outputs()
    assert not left.exists()
    assert files.output_dir().is_dir() and files.output_dir() not in files.sweep_dead_outputs()  # ours stays


KILLED_WITH_AN_UPLOAD = """
import os, signal
from starnet_demo.ui import files
upload = files.gradio_cache_dir() / "0123abcd" / "clip.mp4"
upload.parent.mkdir()
upload.write_bytes(b"half a video")
print(upload, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_gradio_files_of_a_killed_process_are_swept_at_the_next_start_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", KILLED_WITH_AN_UPLOAD], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    upload = Path(done.stdout.strip())
    assert upload.is_file() and upload.parent.parent.parent == tmp_path
    live = tmp_path / f"{files.GRADIO_PREFIX}{os.getppid()}"  # another server's, still running
    live.mkdir()
    ours = files.gradio_cache_dir()
    assert not upload.parent.parent.exists() and live.is_dir()
    assert ours == tmp_path / f"{files.GRADIO_PREFIX}{os.getpid()}" and ours.is_dir()
    assert gr.utils.get_upload_folder() == str(ours) and files.gradio_cache_dir() == ours  # Gradio stores there


@pytest.mark.slow  # two starts of app.py in a process of its own
def test_an_app_killed_mid_video_leaves_neither_upload_nor_result_after_a_restart(tmp_path):
    """``kill -9`` during a video (no exit handler, no Gradio shutdown), then a restart on the same folders: the
    killed process's upload and partial result are gone once the new one serves."""
    env = server_env(tmp_path)
    clip = write_video(tmp_path / "long.mp4", frames=400, fps=10)  # minutes of work: still running when killed
    with serve_app(env, log=tmp_path / "first.log") as first:
        Client(first.url, verbose=False).submit(handle_file(str(clip)), "s1", "cpu", 0.25, 0.45, 320, False, [],
                                                "pytorch", api_name="/detect_video")
        gradio = Path(env["GRADIO_TEMP_DIR"]) / f"{files.GRADIO_PREFIX}{first.pid}"
        outputs = Path(env["TMPDIR"]) / f"{files.OUTPUTS_PREFIX}{first.pid}"
        wait_for(lambda: list(outputs.glob("*.mp4")), timeout=180)  # the upload is in, the result being written
        assert "long.mp4" in [p.name for p in gradio.rglob("*.mp4")]  # beside the examples Gradio copied
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
    assert list(gradio.rglob("long.mp4")) and list(outputs.glob("*.mp4"))  # nothing cleaned up after a kill
    with serve_app(env, log=tmp_path / "second.log") as second:
        assert not gradio.exists() and not outputs.exists()
        assert (Path(env["GRADIO_TEMP_DIR"]) / f"{files.GRADIO_PREFIX}{second.pid}").is_dir()


def test_gradios_cache_sweep_goes_on_after_a_request_races_it(tmp_path):
    """A request records a file while Gradio's sweep walks the set: Gradio's own sweep raises, which ends its
    scheduled task for good; wrapped (``keep_gradio_sweeping``), that round is skipped and the next one deletes."""
    from gradio import route_utils

    recorded: set[str] = set()

    class Racing(str):
        """A recorded path which, as the sweep looks at it, has a request record one more file (once)."""

        def __str__(self) -> str:
            if len(recorded) < 3:
                recorded.add(str(tmp_path / "recorded-meanwhile.webp"))
            return str.__str__(self)

    def record() -> list[Path]:
        paths = [tmp_path / "upload.mp4", tmp_path / "result.webp"]
        for p in paths:
            p.write_bytes(b"x")
        recorded.clear()
        recorded.update({Racing(paths[0]), str(paths[1])})
        return paths

    demo = gr.Blocks()
    demo.temp_file_sets = [recorded]
    record()
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        inspect.unwrap(route_utils.delete_files_created_by_app)(demo, 0)  # Gradio's own
    paths = record()
    files.keep_gradio_sweeping()
    route_utils.delete_files_created_by_app(demo, 0)  # raced: no exception, so the scheduled task lives on
    route_utils.delete_files_created_by_app(demo, 0)
    assert not any(p.exists() for p in paths)


def test_the_sweep_removes_empty_folders_gradio_leaves(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    old, new, kept = tmp_path / "old", tmp_path / "new", tmp_path / "kept"
    for d in (old, new, kept):
        d.mkdir()
    (kept / "result.webp").write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    for d in (old, kept):
        os.utime(d, (an_hour_ago, an_hour_ago))
    files.sweep_outputs()
    assert not old.exists() and new.is_dir() and (kept / "result.webp").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a real disk that the app's examples (0.8 MB) fit on and a 4 MB upload fills (needs the right to
    mount, as root in CI has)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()[:100]}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_an_upload_that_fills_the_disk_is_named_and_leaves_nothing(small_disk, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(small_disk))
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(4 * 2**20))
    with serve(boxy_weights(tmp_path / "weights"), tmp_path / "examples-cache") as (_, url), \
            httpx.Client(base_url=f"{url.rstrip('/')}/gradio_api", timeout=60) as http:
        refused = http.post("/upload", files={"files": big.open("rb")})
        assert (refused.status_code, refused.text) == (507, DISK_FULL)
        served = Path(gr.utils.get_upload_folder())  # the app's own folder on the small disk
        assert served.parent == small_disk and not [p for p in served.iterdir() if p.is_file()]  # the partial is gone
        fits = http.post("/upload", files={"files": BUS.open("rb")})  # 134 KB: the server carries on
        assert fits.status_code == 200 and Path(fits.json()[0]).is_file()
