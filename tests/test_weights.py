"""The weights format: exact round trips, and clear errors for missing, corrupt or pickled files."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from starnet_demo.models.yolo import build_model
from starnet_demo.weights.files import WeightsError, load_weights, save_weights, sha256_file

VARIANT = "s050"


def pickle_that_mkdirs(marker: Path, torch_format: bool) -> bytes:
    """A state-dict-shaped pickle that creates ``marker`` when unpickled: proof of whether anything unpickled it."""

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    state = {"model.0.weight": Payload()}
    if not torch_format:
        return pickle.dumps(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def set_tensors(config_path: Path, data: bytes) -> Path:
    """Replace a variant's tensors file and record the new file's sha256, so only the format check can object."""
    config = json.loads(config_path.read_text())
    tensors = config_path.with_name(config["file"])
    tensors.write_bytes(data)
    config["sha256"] = sha256_file(tensors)
    config_path.write_text(json.dumps(config))
    return tensors


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(VARIANT).eval()


@pytest.fixture
def saved(model, tmp_path) -> Path:
    """fp16 weights of ``model`` in a folder of this test's own; returns the config path."""
    return save_weights(model, tmp_path / "weights")


def test_fp32_round_trip_gives_identical_outputs(model, tmp_path):
    config_path = save_weights(model, tmp_path, dtype=torch.float32)
    loaded, config = load_weights(config_path)
    assert config["dtype"] == "float32" and config["variant"] == VARIANT
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert torch.equal(expected[0], got[0])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                  strict=True))


def test_fp16_save_load_save_is_byte_identical(saved, tmp_path):
    loaded, config = load_weights(saved)
    again = save_weights(loaded, tmp_path / "again")
    assert again.with_suffix(".safetensors").read_bytes() == saved.with_suffix(".safetensors").read_bytes()
    assert json.loads(again.read_text())["sha256"] == config["sha256"] == sha256_file(saved.with_suffix(".safetensors"))


def test_missing_files_are_clear_errors(saved, tmp_path):
    saved.with_suffix(".safetensors").unlink()
    with pytest.raises(WeightsError, match=f"weights file not found: {saved.with_suffix('.safetensors')}"):
        load_weights(saved)
    saved.unlink()
    with pytest.raises(WeightsError, match=f"weights config not found: {saved}"):
        load_weights(saved)


def test_flipped_byte_is_a_checksum_mismatch(saved):
    tensors = saved.with_suffix(".safetensors")
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"checksum mismatch for {tensors}: expected sha256 "):
        load_weights(saved)


def test_truncated_file_is_not_readable_safetensors(saved):
    tensors = set_tensors(saved, saved.with_suffix(".safetensors").read_bytes()[:1000])
    with pytest.raises(WeightsError, match=f"{tensors} is not a readable safetensors file"):
        load_weights(saved)


def test_config_that_is_not_json_is_a_clear_error(saved):
    saved.write_text("{not json")
    with pytest.raises(WeightsError, match=f"weights config {saved} is not valid JSON"):
        load_weights(saved)


def test_tensors_of_another_variant_do_not_fit(saved, tmp_path):
    other = save_weights(build_model("s100"), tmp_path / "other").with_suffix(".safetensors")
    set_tensors(saved, other.read_bytes())
    with pytest.raises(WeightsError, match=f"does not fit variant {VARIANT}"):
        load_weights(saved)


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch.save", "pickle"])
def test_pickle_renamed_safetensors_is_refused_unopened(saved, tmp_path, torch_format):
    marker = tmp_path / "unpickled"
    payload = pickle_that_mkdirs(marker, torch_format)
    tensors = set_tensors(saved, payload)  # its sha256 is on record, so only the format can stop it
    with pytest.raises(WeightsError, match=f"{tensors} is not a readable safetensors file"):
        load_weights(saved)
    assert not marker.exists()

    # The payload is live: unpickling it does run code. This is what load_weights never does.
    if torch_format:
        torch.load(io.BytesIO(payload), weights_only=False)
    else:
        pickle.loads(payload)
    assert marker.is_dir()
