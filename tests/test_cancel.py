"""Cancel that stops: a ``/detect_video`` cancelled through gradio_client, against ``app.py`` served in this process,
stops its work within seconds (its threads end), removes its files, and never lets more videos run at once than
the app's worker limit."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from app_support import encoding, video_threads, wait_for, write_video
from gradio_client import Client, handle_file

from starnet_demo.ui import files

STOP_S = 5  # the bound: the server is idle this long after a cancel


@pytest.fixture(scope="module")
def served(served_app):
    app, url = served_app
    return app, Client(url, verbose=False)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """40 s at 10 FPS: far more work than the test waits for."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", frames=400, fps=10)


def submit(client: Client, clip):
    return client.submit(handle_file(str(clip)), "s1", "cpu", 0.25, 0.45, 320, False, [], "pytorch",
                         api_name="/detect_video")


def test_a_cancelled_video_stops_within_seconds_and_leaves_no_files(served, long_clip):
    app, client = served
    before = set(files.output_dir().iterdir())  # results of other tests in this process are not this job's
    job = submit(client, long_clip)
    wait_for(encoding, timeout=120)  # the model is loaded
    time.sleep(1.5)
    assert [p for p in files.output_dir().glob("*.mp4") if p not in before]  # it is writing
    job.cancel()
    took = wait_for(lambda: not video_threads(), timeout=STOP_S)
    print(f"stopped {took:.2f} s after the cancel")
    assert not [p for p in set(files.output_dir().iterdir()) - before if p.suffix in (".mp4", ".csv", ".json")]


def test_a_client_that_goes_away_stops_its_video(served, long_clip):
    """The browser tab closed mid-video: the event stream is dropped without a cancel, and the work stops too."""
    _, client = served
    fn_index = client._infer_fn_index("/detect_video", None)
    with httpx.Client(base_url=f"{client.src.rstrip('/')}/gradio_api", timeout=30) as http:
        [path] = http.post("/upload", files={"files": long_clip.open("rb")}).raise_for_status().json()
        session = uuid.uuid4().hex
        video = {"path": path, "meta": {"_type": "gradio.FileData"}}
        http.post("/queue/join", json={"data": [video, "s1", "cpu", 0.25, 0.45, 320, False, [], "pytorch"],
                                        "fn_index": fn_index, "session_hash": session}).raise_for_status()
        with http.stream("GET", "/queue/data", params={"session_hash": session}):
            wait_for(encoding, timeout=120)
            time.sleep(1.5)
            assert video_threads()
        # leaving the block closes the connection: the client is gone
    took = wait_for(lambda: not video_threads(), timeout=STOP_S)
    print(f"stopped {took:.2f} s after the client went away")
    assert not list(files.output_dir().glob("*.mp4")) and not Path(path).exists()  # nor is the upload kept


@pytest.mark.slow  # three rounds of two videos
def test_cancelled_videos_never_run_past_the_worker_limit(served, long_clip):
    """Three rounds of "submit 2, cancel 2, submit 2 more at once": at no moment more videos run than the app has
    workers (a cancelled video that ran on would make 4), and none is left running or on disk at the end."""
    app, client = served

    def running(name: str = "video-job") -> int:
        return sum(t.name == name for t in video_threads())

    most, jobs = 0, [submit(client, long_clip) for _ in range(2)]
    for _ in range(3):
        wait_for(lambda: running("video-encode") == 2, timeout=120)
        time.sleep(0.5)
        for job in jobs:
            job.cancel()
        jobs = [submit(client, long_clip) for _ in range(2)]
        until = time.monotonic() + 3
        while time.monotonic() < until:
            most = max(most, running())
            time.sleep(0.02)
    for job in jobs:
        job.cancel()
    wait_for(lambda: not video_threads(), timeout=STOP_S)
    assert most == app.WORKERS == 2
    assert not list(files.output_dir().glob("*.mp4"))
