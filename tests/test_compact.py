"""Compact weights files: the large conv weights stored as int8 with a scale per output channel."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from starnet_demo import build_model
from starnet_demo.weights.compact import SCALE, pack, packable, unpack
from starnet_demo.weights.files import load_weights, save_weights


def test_pack_stores_big_convs_as_int8_and_unpack_restores_them_closely():
    torch.manual_seed(0)
    state = build_model("s1").state_dict()
    packed = pack(state)
    big = [k for k, v in state.items() if packable(k, v)]
    assert big and all(packed[k].dtype == torch.int8 and packed[k + SCALE].dtype == torch.float32 for k in big)
    assert not any(packable(k, v) for k, v in state.items() if ".stem_" in k or ".cv3.0.2." in k)
    assert all(packed[k].dtype == torch.float16 for k, v in state.items() if v.is_floating_point() and k not in big)
    restored = unpack(packed)
    assert restored.keys() == state.keys()
    for k in big:  # at most half a step of 1/127 of the channel's largest weight
        step = state[k].reshape(len(state[k]), -1).abs().amax(1) / 127
        error = (restored[k] - state[k]).reshape(len(state[k]), -1).abs().amax(1)
        assert torch.all(error <= step / 2 + 1e-7), k


def test_int8_weights_load_as_float32_and_save_to_the_same_bytes(tmp_path, bus_tensor):
    torch.manual_seed(0)
    model = build_model("s050").eval()
    config_path = save_weights(model, tmp_path / "a", int8=True)
    loaded, config = load_weights(config_path)
    assert "int8" in config and any(k.endswith(SCALE) for k in load_file(config_path.with_suffix(".safetensors")))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # training starts from float32
    with torch.no_grad():
        ours, theirs = loaded(bus_tensor)[0], model(bus_tensor)[0]
    assert (ours - theirs).abs().max() <= 0.02 * theirs.abs().max()
    again = save_weights(loaded, tmp_path / "b", int8=True)  # dequantized weights pack back to the same integers
    assert load_weights(again)[1]["sha256"] == config["sha256"]
