"""Bad input against the running app: every corpus case (``bad_inputs.CASES``) through the API of ``app.py`` served
in its own process on 127.0.0.1.

For each case: a clear message (the app's own, matched by a regular expression: never a stack trace or Gradio's bare
"Error"), or success for inputs that are odd but usable; the server still up and a good request right after served;
and nothing left behind by a refused request, in Gradio's cache or the app's temporary folder (the server runs with
its own ``GRADIO_TEMP_DIR`` and ``TMPDIR`` so nothing else writes there): a refused file is deleted at once, and only
an upload refused for its settings stays (the user may retry with other settings) until Gradio's cache sweep.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from app_support import BUS, server_env
from bad_inputs import CASES, GOOD, Case, queue_call, resolve, write_corpus
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from starnet_demo.media.video import MAX_BYTES
from starnet_demo.tools.loadtest import serve_app


def files(env: dict[str, str]) -> set[Path]:
    return {p for k in ("GRADIO_TEMP_DIR", "TMPDIR") for p in Path(env[k]).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input-app")
    env = server_env(root)
    with serve_app(env, log=root / "server.log") as server:
        yield server, env, Client(server.url, verbose=False)


def send(client: Client, case: Case, folder: Path) -> tuple[bool, object, list[str]]:
    """(success, outputs or error message, warnings shown)."""
    args = resolve(case.args, folder)
    if case.raw:
        return queue_call(client, case.api, *args)
    job = client.submit(*(handle_file(str(a)) if isinstance(a, Path) else a for a in args), api_name=case.api)
    try:
        ok, value = True, job.result(timeout=120)
    except AppError as e:
        ok, value = False, str(e)
    updates = job.communicator.updates
    warnings = []
    while not updates.empty():
        log = getattr(updates.get_nowait(), "log", None)
        if log and log[1] == "warning":
            warnings.append(log[0])
    return ok, value, warnings


def good_request(client: Client) -> dict:
    return client.predict(handle_file(str(BUS)), "s1", "cpu", *GOOD, api_name="/detect_image")[1]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(served, corpus, case):
    server, env, client = served
    before = files(env)
    ok, value, warnings = send(client, case, corpus)
    if case.error:
        assert not ok, f"accepted: {value}"
        assert re.search(case.error, value), value
        assert "Traceback" not in value and value.strip() != "Error"
        retry = {a.name for a in resolve(case.args, corpus) if isinstance(a, Path) and a.name not in value}
        left = {p.name for p in files(env) - before}
        assert left <= retry, f"a refused request left {left - retry} behind"
    else:
        assert ok, value
    if case.notice:
        assert any(re.search(case.notice, w) for w in warnings), warnings
    assert server.alive()
    assert good_request(client)["detections"]


def test_corpus_has_every_kind_of_bad_input():
    assert len(CASES) >= 15 and len({c.api for c in CASES}) == 8


def test_upload_over_the_size_limit_is_refused_before_it_is_stored(served, tmp_path):
    """Gradio's ``max_file_size`` (set by the app) stops the upload itself; a sparse file costs no disk here."""
    server, env, client = served
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f:
        f.truncate(MAX_BYTES + 1)
    before = files(env)
    with pytest.raises(Exception, match=r"(?i)413|too large|exceeds|maximum"):
        client.predict(handle_file(str(big)), "s1", "cpu", *GOOD, False, [], "pytorch", api_name="/detect_video")
    assert files(env) - before == set()
    assert server.alive() and good_request(client)["detections"]


def test_stopping_the_server_removes_the_outputs(tmp_path, corpus):
    """Results wait in the app's temporary folder until Gradio has copied them into its cache; a stop
    (SIGTERM, as a Space restart sends) removes the folder and Gradio's copies: at most the upload is left."""
    env = server_env(tmp_path)
    with serve_app(env, log=tmp_path / "server.log") as server:
        at_start = files(env)
        client = Client(server.url, verbose=False)
        assert client.predict(handle_file(str(corpus / "clip.mp4")), "s1", "cpu", *GOOD, False, [], "pytorch",
                              api_name="/detect_video")[1]["frames"] == 6
        assert len(list(Path(env["TMPDIR"]).glob("starnet-demo-outputs-*/*.mp4"))) == 1
    assert server.process.returncode == 0, (tmp_path / "server.log").read_text()[-3000:]
    assert not list(Path(env["TMPDIR"]).glob("starnet-demo-*"))
    assert {p.name for p in files(env) - at_start} <= {"clip.mp4"}
