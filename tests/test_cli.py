"""The command line's conventions: help without heavy imports, exit 2 for bad arguments and 1 for failures (one line
for the user's, the traceback too for ours), values checked before any work, and no token on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from starnet_demo import cli
from starnet_demo.cli import main

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "ultralytics", "gradio", "timm", "cv2", "supervision", "huggingface_hub", "numpy")


def test_help_imports_nothing_heavy():
    """``--help``, the top one and every command's, in a fresh interpreter: none of the libraries that take seconds to
    import is loaded (they made ``--help`` take about 4 s)."""
    code = f"""
import contextlib, io, json, sys
from starnet_demo.cli import build_parser, main
commands = list(build_parser()._subparsers._group_actions[0].choices)
codes = []
for argv in (["--help"], *([c, "--help"] for c in commands)):
    with contextlib.redirect_stdout(io.StringIO()):
        codes.append(main(argv))
print(json.dumps({{"codes": codes, "commands": commands, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["heavy"] == [] and set(result["codes"]) == {0}
    assert {"info", "detect", "deploy-space", "publish", "train", "eval", "bench"} <= set(result["commands"])


@pytest.mark.parametrize(("argv", "says"), [
    (["info", "--imgsz", "7"], "image size must be a number from 32"),
    (["info", "--imgsz", "big"], "image size must be a whole number"),
    (["info", "--variants", "s9"], "unknown variant(s) s9"),
    (["detect", "x.jpg", "--conf", "1.5"], "must be from 0.0 to 1.0"),
    (["detect", "x.jpg", "--runtime", "fast"], "unknown runtime(s) fast"),
    (["detect"], "the following arguments are required: SOURCE"),
    (["bench", "--runs", "0"], "must be at least 1, got 0"),
    (["loadtest", "--users", "-3"], "must be at least 1, got -3"),
    (["deploy-space"], "the following arguments are required: --repo-id"),
    (["publish", "--token", "hf_secret"], "set HF_TOKEN or run `hf auth login`"),
    (["nonsense"], "invalid choice"),
])
def test_bad_arguments_exit_2_in_one_line(argv, says, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert says in captured.err and captured.err.count("\n") == 1 and not captured.out
    assert "hf_secret" not in captured.err


def test_a_user_failure_exits_1_in_one_line(tmp_path, capsys):
    assert main(["soup", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: soup member not found: {tmp_path / 'a.json'}\n"


def test_a_fault_of_ours_exits_1_with_its_traceback_logged(monkeypatch, caplog):
    def broken(args):
        return {}["a key that a bug forgot"]

    monkeypatch.setattr(cli, "cmd_info", broken)
    assert main(["info"]) == 1
    [record] = [r for r in caplog.records if r.name == "starnet_demo"]
    assert "info failed: a fault of ours" in record.getMessage() and record.exc_info[0] is KeyError


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", interrupted)
    assert main(["info"]) == 130 and capsys.readouterr().err == "interrupted\n"
