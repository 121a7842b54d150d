"""Pulling and publishing weights through the real huggingface_hub client, against a Hub stand-in on 127.0.0.1.

Each test gets its own server, HF cache and ``weights/`` folder. ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are set in the
environment, as a user would; ``huggingface_hub.constants.HF_HUB_OFFLINE`` is forced off for the online tests in case
the suite runs with ``HF_HUB_OFFLINE=1`` set before the library was imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from test_weights import pickle_that_mkdirs

from starnet_demo.cli import main
from starnet_demo.models.yolo import build_model
from starnet_demo.tools.publish import build_upload_folder, publish
from starnet_demo.weights import hub as hub_mod
from starnet_demo.weights.files import EMBEDDED_DIR, FORMAT, WeightsError, load_weights, save_weights, sha256_file
from starnet_demo.weights.hub import resolve, resolve_weights

REPO = "test-org/yolov8-starnet"  # conftest.HUB_REPO: the ``hub`` fixture serves ``release`` there
VARIANT = "s050"
META = {
    "metrics": {"map50": 0.41234, "map50_95": 0.25, "split": "coco-mini val", "per_class": {"person": 0.5}},
    "recipe": [
        {"stage": "distill", "data": "merged.yaml", "teacher": "yolov8n.safetensors", "epochs": 30, "imgsz": 320},
        {"stage": "finetune", "data": "merged.yaml", "epochs": 60, "imgsz": 512, "lr0": 0.002},
    ],
}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The genuine release: s050 random-init weights with metrics and a recipe. Read-only: tests copy it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("release")
    save_weights(build_model(VARIANT), folder, META)
    return folder


def release_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def local(tmp_path, release) -> Path:
    """This checkout's ``weights/``: a copy of the release."""
    return Path(shutil.copytree(release, tmp_path / "weights"))


@pytest.fixture
def empty_local(tmp_path) -> Path:
    (tmp_path / "no-weights").mkdir()
    return tmp_path / "no-weights"


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


def flipped(data: bytes) -> bytes:
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    return bytes(bad)


def hub_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- pull --------------------------------------------------------------------------------------------------------

def test_pull_downloads_the_pinned_release_and_verifies_it(hub, local, cache, release):
    got = resolve(VARIANT, local_dir=local, cache_dir=cache)
    assert (got.source, got.notice, got.reason) == ("hub", None, None)
    assert got.path.is_relative_to(cache) and got.path.name == f"{VARIANT}.json"
    tensors = got.path.with_suffix(".safetensors")
    assert tensors.read_bytes() == (release / f"{VARIANT}.safetensors").read_bytes()
    assert ("GET", f"/{REPO}/resolve/v1/{VARIANT}.json") in hub.requests
    assert any(method == "GET" and path.startswith("/cdn/") for method, path in hub.requests)  # LFS redirect taken
    model, config = load_weights(got.path)
    assert config["sha256"] == sha256_file(tensors)
    reference, _ = load_weights(release / f"{VARIANT}.json")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                  strict=True))


def test_pull_at_a_commit_id(hub, local, cache):
    oid = hub.repos[REPO]["refs"]["main"]
    got = resolve(VARIANT, revision=oid, local_dir=local, cache_dir=cache)
    assert got.source == "hub" and oid in got.path.parts


def test_cache_serves_when_the_hub_is_gone_or_offline(hub, local, cache, monkeypatch, caplog):
    first = resolve(VARIANT, local_dir=local, cache_dir=cache)
    assert first.source == "hub"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = len(hub.requests)
    offline = resolve(VARIANT, local_dir=local, cache_dir=cache)
    assert (offline.path, offline.source, offline.notice) == (first.path, "cache", None)
    assert len(hub.requests) == seen  # offline means no request at all

    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.stop()
    with caplog.at_level(logging.WARNING):
        gone = resolve_weights(VARIANT, local_dir=local, cache_dir=cache)
    assert gone == first.path
    assert not hub_warnings(caplog)


def test_unreachable_hub_falls_back_to_local_weights_with_one_line(hub, local, cache, caplog, capfd):
    hub.stop()  # nothing listens on the port any more: connection refused
    with caplog.at_level(logging.WARNING):
        path = resolve_weights(VARIANT, local_dir=local, cache_dir=cache)
    assert path == local / f"{VARIANT}.json"
    [record] = hub_warnings(caplog)
    message = record.getMessage()
    assert "\n" not in message and record.exc_info is None
    assert "Hub unreachable" in message and hub.url in message and str(path) in message
    assert "Traceback" not in capfd.readouterr().err
    load_weights(path)


def test_offline_without_cache_falls_back_to_local_weights(hub, local, cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = resolve(VARIANT, local_dir=local, cache_dir=cache)
    assert (got.path, got.source) == (local / f"{VARIANT}.json", "local")
    assert got.reason.startswith("Hub offline") and "\n" not in got.reason
    assert got.notice == hub_mod.SHIPPED_NOTICE and str(local) not in got.notice
    assert hub.requests == []


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"repo_id": "test-org/missing"}, "Hub repo test-org/missing not found"),
    ({"revision": "v9"}, "revision v9 not found"),
])
def test_missing_repo_or_revision_falls_back_to_local_weights(hub, local, cache, kwargs, reason):
    got = resolve(VARIANT, local_dir=local, cache_dir=cache, **kwargs)
    assert got.source == "local" and got.reason.startswith(reason)


def test_missing_variant_on_the_hub_falls_back(hub, local, cache, release):
    shutil.copy(release / f"{VARIANT}.json", local / "s1.json")  # a local s1 (contents irrelevant to resolving)
    shutil.copy(release / f"{VARIANT}.safetensors", local / "s1.safetensors")
    got = resolve("s1", local_dir=local, cache_dir=cache)
    assert got.source == "local" and got.reason.startswith("s1.json not in Hub repo")


def test_tampered_download_is_refused_removed_and_local_used(hub, local, cache, release):
    genuine = (release / f"{VARIANT}.safetensors").read_bytes()
    hub.tamper(genuine, flipped(genuine))  # same size and advertised sha256, different bytes
    got = resolve(VARIANT, local_dir=local, cache_dir=cache)
    assert (got.path, got.source) == (local / f"{VARIANT}.json", "local")
    assert "refused as corrupt or tampered" in got.reason and "\n" not in got.reason
    assert not list(cache.rglob(f"{VARIANT}.safetensors"))  # the bad copy is not kept for next time
    assert not [p for p in (cache / f"models--{REPO.replace('/', '--')}" / "blobs").iterdir()
                if hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(flipped(genuine)).hexdigest()]

    hub.tampered.clear()  # the CDN is fixed: the next call downloads again and succeeds
    assert resolve(VARIANT, local_dir=local, cache_dir=cache).source == "hub"


def test_swapped_release_is_refused_by_the_hash_in_this_checkout(hub, local, cache, release):
    """Someone with write access replaces the weights and their config's sha256: git's hash still rules."""
    swapped = flipped((release / f"{VARIANT}.safetensors").read_bytes())
    config = json.loads((release / f"{VARIANT}.json").read_text())
    config["sha256"] = hashlib.sha256(swapped).hexdigest()
    hub.commit(REPO, {f"{VARIANT}.safetensors": swapped, f"{VARIANT}.json": json.dumps(config).encode()})
    got = resolve(VARIANT, revision="main", local_dir=local, cache_dir=cache)
    assert got.source == "local" and "this checkout's weights config" in got.reason


def test_config_swapped_alone_is_refused(hub, local, cache, release):
    config = json.loads((release / f"{VARIANT}.json").read_text())
    config["sha256"] = "0" * 64
    hub.commit(REPO, {f"{VARIANT}.json": json.dumps(config).encode()})
    got = resolve(VARIANT, revision="main", local_dir=local, cache_dir=cache)
    assert got.source == "local" and "its config's sha256 differs from this checkout's" in got.reason


def test_pickle_served_as_safetensors_is_never_unpickled(hub, empty_local, cache, tmp_path):
    """Without a hash in this checkout, a self-consistent release of a pickle gets as far as the format check."""
    marker = tmp_path / "unpickled"
    payload = pickle_that_mkdirs(marker, torch_format=True)
    config = {"format": FORMAT, "variant": VARIANT, "nc": 80, "names": {}, "file": f"{VARIANT}.safetensors",
              "sha256": hashlib.sha256(payload).hexdigest()}
    hub.commit(REPO, {f"{VARIANT}.safetensors": payload, f"{VARIANT}.json": json.dumps(config).encode()})
    with pytest.raises(WeightsError, match="refused as corrupt or tampered: it is not a safetensors file"):
        resolve(VARIANT, revision="main", local_dir=empty_local, cache_dir=cache)
    assert not marker.exists()


def test_corrupt_download_without_local_weights_is_a_clear_error(hub, empty_local, cache, release):
    genuine = (release / f"{VARIANT}.safetensors").read_bytes()
    hub.tamper(genuine, flipped(genuine))
    with pytest.raises(WeightsError, match=rf"no weights for {VARIANT}: .*refused.*, and the app ships none; ") as e:
        resolve(VARIANT, local_dir=empty_local, cache_dir=cache)
    assert str(empty_local) not in str(e.value) and f"{VARIANT}.safetensors and {VARIANT}.json" in str(e.value)


def test_neither_source_is_a_clear_error(hub, empty_local, cache):
    hub.stop()
    with pytest.raises(WeightsError) as err:
        resolve(VARIANT, local_dir=empty_local, cache_dir=cache)
    message = str(err.value)
    assert message.startswith(f"no weights for {VARIANT}: Hub unreachable") and "\n" not in message


def test_a_local_disk_error_is_not_reported_as_the_hub_being_unreachable(hub, local, tmp_path):
    """The HF cache cannot be written (here: its folder is a file): that error is raised as what it is, not turned
    into "Hub unreachable" and a quiet fallback."""
    blocked = tmp_path / "hf-cache-is-a-file"
    blocked.write_text("")
    with pytest.raises(OSError) as err:
        resolve(VARIANT, local_dir=local, cache_dir=blocked)
    assert not isinstance(err.value, WeightsError) and "Hub unreachable" not in str(err.value)
    assert OSError not in hub_mod._HUB_ERRORS


def test_locate_probes_the_hub_once_per_model_and_tells_the_user_no_path(hub, local, monkeypatch, caplog):
    """A server locates a model once: one probe and one download, the reason logged on the server with the path,
    and the user's notice plain. Replacing the shipped files locates it afresh."""
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(local))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(local.parent / "hf-cache"))
    hub_mod.forget_located()
    try:
        first = hub_mod.locate(VARIANT)
        assert (first.source, first.notice) == ("hub", None)
        assert first.sha256 == sha256_file(local / f"{VARIANT}.safetensors")
        seen = len(hub.requests)
        for _ in range(3):
            assert hub_mod.locate(VARIANT) is first
        assert len(hub.requests) == seen  # located once: no further probe or download

        hub.stop()
        (local / f"{VARIANT}.json").touch()  # the shipped record changed: locate again, now without a Hub
        with caplog.at_level(logging.WARNING):
            fallback = hub_mod.locate(VARIANT)
        # the pinned release is still in the HF cache, so that serves: no fallback yet
        assert fallback.source == "cache" and fallback.notice is None
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(local.parent / "empty-hf-cache"))
        with caplog.at_level(logging.WARNING):
            shipped = hub_mod.locate(VARIANT)
        assert shipped.source == "local" and shipped.notice == hub_mod.SHIPPED_NOTICE
        assert str(local) not in shipped.notice and "Hub unreachable" in caplog.text and str(local) in caplog.text
    finally:
        hub_mod.forget_located()


def test_repo_and_revision_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("STARNET_HUB_REPO", raising=False)
    monkeypatch.delenv("STARNET_HUB_REVISION", raising=False)
    assert (hub_mod.hub_repo(), hub_mod.hub_revision()) == (hub_mod.DEFAULT_REPO, hub_mod.HUB_REVISION)
    monkeypatch.setenv("STARNET_HUB_REPO", "someone/else")
    monkeypatch.setenv("STARNET_HUB_REVISION", "abc")
    assert (hub_mod.hub_repo(), hub_mod.hub_revision()) == ("someone/else", "abc")


def test_eval_cli_without_weights_exits_with_one_line(hub, empty_local, monkeypatch, capsys):
    hub.stop()
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(empty_local))
    assert main(["eval", "--variant", VARIANT, "--data", "unused.yaml", "--repo-id", REPO]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no weights for {VARIANT}: Hub unreachable") and "\n" not in err


def test_eval_cli_pulls_from_the_repo_in_the_flag_or_the_environment(hub, release, empty_local, cache,
                                                                     coco_shapes_data, tmp_path, monkeypatch):
    """``eval`` without ``--weights`` evaluates the pinned release of ``--repo-id``, else of ``$STARNET_HUB_REPO``."""
    torch.manual_seed(1)
    other = tmp_path / "other-release"
    save_weights(build_model(VARIANT), other, META)
    hub.commit("test-org/other", release_files(other), message="other")
    hub.tag("test-org/other", "v1")
    monkeypatch.setenv("STARNET_WEIGHTS_DIR", str(empty_local))  # no fallback: the pull must work
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    for flag, source in (([], release), (["--repo-id", "test-org/other"], other)):
        out = tmp_path / f"eval-{len(flag)}.json"
        assert main(["eval", "--variant", VARIANT, "--data", str(coco_shapes_data), "--imgsz", "128", "--bootstrap",
                     "0", "--out", str(out), *flag]) == 0
        assert json.loads(out.read_text())["weights_sha256"] == sha256_file(source / f"{VARIANT}.safetensors")
    pulled = [path for method, path in hub.requests if f"{VARIANT}.safetensors" in path]
    assert any(REPO in p for p in pulled) and any("test-org/other" in p for p in pulled)


@pytest.mark.parametrize("variant", ["s1", "s2", "s3", "s4", "yolov8n"])
def test_every_committed_variant_loads_offline_from_weights(variant, cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("STARNET_WEIGHTS_DIR", raising=False)
    got = resolve(variant, cache_dir=cache)
    assert (got.source, got.path) == ("local", EMBEDDED_DIR / f"{variant}.json")
    model, config = load_weights(got.path)
    assert config["variant"] == variant and config["sha256"] == sha256_file(EMBEDDED_DIR / f"{variant}.safetensors")
    assert config["metrics"]["map50"] > 0 and config["recipe"]
    with torch.no_grad():
        boxes_and_scores = model.eval()(torch.zeros(1, 3, 64, 64))[0]
    assert boxes_and_scores.shape == (1, 4 + config["nc"], 84)  # 8x8 + 4x4 + 2x2 anchors


# --- publish -----------------------------------------------------------------------------------------------------

def test_upload_folder_holds_exactly_weights_config_and_card(release, tmp_path):
    folder = build_upload_folder(VARIANT, release, tmp_path / "upload", repo_id=REPO)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", f"{VARIANT}.json", f"{VARIANT}.safetensors"]
    for name in (f"{VARIANT}.json", f"{VARIANT}.safetensors"):
        assert (folder / name).read_bytes() == (release / name).read_bytes()

    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "agpl-3.0" and card.data.library_name == "ultralytics"
    assert card.data.pipeline_tag == "object-detection" and "starnet" in card.data.tags
    text = card.text
    assert "| variant | mAP50 | mAP50-95 | split |" in text  # scalar metrics only, mAP first
    assert f"| {VARIANT} | 0.4123 | 0.25 | coco-mini val |" in text
    assert "1. **distill**: data: merged.yaml; teacher: yolov8n.safetensors; epochs: 30; imgsz: 320" in text
    assert "2. **finetune**: data: merged.yaml; epochs: 60; imgsz: 512; lr0: 0.002" in text
    assert sha256_file(release / f"{VARIANT}.safetensors") in text
    for section in ("## Intended use", "## Limits", "## Licence"):
        assert section in text


def test_upload_folder_refuses_weights_that_do_not_match_their_config(release, tmp_path):
    source = Path(shutil.copytree(release, tmp_path / "weights"))
    tensors = source / f"{VARIANT}.safetensors"
    tensors.write_bytes(flipped(tensors.read_bytes()))
    with pytest.raises(WeightsError, match="does not match its config"):
        build_upload_folder(VARIANT, source, tmp_path / "upload")
    with pytest.raises(ValueError, match="not empty"):
        build_upload_folder(VARIANT, release, source)


def test_publish_uploads_the_folder_and_it_pulls_back_identical(hub, release, empty_local, cache, tmp_path):
    commit = publish("test-org/new-repo", [VARIANT], release, tag="v2", token="test-token")
    assert commit.startswith(f"{hub.url}/test-org/new-repo/commit/") and commit.oid in commit
    expected = build_upload_folder(VARIANT, release, tmp_path / "expected", repo_id="test-org/new-repo")
    assert hub.files("test-org/new-repo", "v2") == release_files(expected)

    got = resolve(VARIANT, repo_id="test-org/new-repo", revision="v2", local_dir=empty_local, cache_dir=cache)
    assert got.source == "hub"
    for name in (f"{VARIANT}.json", f"{VARIANT}.safetensors"):
        assert got.path.with_name(name).read_bytes() == (release / name).read_bytes()


def test_publish_cli(hub, release, capsys, tmp_path):
    assert main(["publish", "--repo-id", REPO, "--variant", VARIANT, "--weights-dir", str(release),
                 "--dry-run", "--out", str(tmp_path / "dry")]) == 0
    assert sorted(p.name for p in (tmp_path / "dry").iterdir()) == ["README.md", "s050.json", "s050.safetensors"]
    before = dict(hub.repos[REPO]["refs"])

    assert main(["publish", "--repo-id", REPO, "--weights-dir", str(release), "--tag", "v3"]) == 0
    out = capsys.readouterr().out
    assert f"published {VARIANT} to {REPO}: {hub.url}/{REPO}/commit/" in out
    assert hub.repos[REPO]["refs"]["v3"] != before["main"] and hub.repos[REPO]["refs"]["v1"] == before["v1"]

    hub.stop()
    assert main(["publish", "--repo-id", REPO, "--weights-dir", str(release)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: publishing to {REPO} at {hub.url} failed (") and "\n" not in err


def test_the_shipped_reference_finds_the_bus_and_the_people(cache, monkeypatch):
    """``/detect_image`` with ``yolov8n``: the COCO-trained reference from ``weights/``, offline."""
    from starnet_demo.inference.detector import clear_detectors
    from starnet_demo.ui.handlers import detect_image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("STARNET_WEIGHTS_DIR", raising=False)
    clear_detectors()
    try:
        result = detect_image(str(EMBEDDED_DIR.parent / "examples" / "bus.jpg"), "yolov8n", "cpu", 0.25, 0.45, 640,
                              runtime="pytorch")[1]
    finally:
        clear_detectors()
    classes = [d["class"] for d in result["detections"]]
    assert classes.count("bus") == 1 and classes.count("person") >= 3, classes
