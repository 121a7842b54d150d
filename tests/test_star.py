"""Star-operation hooks: one ordinary forward pass yields act(f1(x)), f2(x) and their product for every block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from starnet_demo import build_model
from starnet_demo.models.backbone import blocks
from starnet_demo.models.star import block_keys, capture_star
from starnet_demo.models.yolo import backbone

STAGE_STRIDES = {"0": 4, "1": 8, "2": 16, "3": 32}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("s050").eval()
    with torch.no_grad():  # trained-looking BatchNorms, so the maps are not all alike
        for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            bn.running_var.uniform_(0.05, 0.5)
            bn.bias.uniform_(-0.3, 0.3)
    return m


@pytest.fixture(scope="module")
def captured(model, bus_tensor):
    return capture_star(model, bus_tensor)


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_every_block_of_every_stage(model, captured):
    _, maps = captured
    assert list(maps) == block_keys(model) == list(blocks(backbone(model)))
    assert {k.split(".")[0] for k in maps} == set(STAGE_STRIDES)


def test_shapes(model, captured, bus_tensor):
    _, maps = captured
    size = bus_tensor.shape[-1]
    for key, m in maps.items():
        block = blocks(backbone(model))[key]
        hidden = block.f1.conv.out_channels
        stride = STAGE_STRIDES[key.split(".")[0]]
        assert m.shape == (hidden, size // stride, size // stride), key
        assert m.act_f1.shape == m.f2.shape == m.star.shape == m.shape, key
        assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (m.act_f1, m.f2, m.star))


def test_star_is_act_f1_times_f2(captured):
    _, maps = captured
    for key, m in maps.items():
        assert torch.equal(m.star, m.act_f1 * m.f2), key
        assert m.act_f1.min() >= 0 and m.act_f1.max() <= 6, key  # ReLU6
        assert m.star.abs().sum() > 0, key


def test_maps_are_what_they_claim(model, captured, bus_tensor):
    """Recompute act(f1(x)) and f2(x) from each block's own input, caught in a separate plain forward pass."""
    _, maps = captured
    inputs = {}
    handles = [blk.register_forward_pre_hook(lambda m, a, k=k: inputs.__setitem__(k, a[0].clone()))
               for k, blk in blocks(backbone(model)).items()]
    try:
        with torch.no_grad():
            model(bus_tensor)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for key, blk in blocks(backbone(model)).items():
            x = blk.dwconv(inputs[key])
            torch.testing.assert_close(maps[key].act_f1, blk.act(blk.f1(x))[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(maps[key].f2, blk.f2(x)[0], rtol=1e-5, atol=1e-6)


def test_one_forward_pass_same_predictions_and_no_hooks_left(model, bus_tensor):
    calls = []
    counter = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    block_calls = []
    block_counters = [blk.register_forward_pre_hook(lambda m, a: block_calls.append(1))
                      for blk in blocks(backbone(model)).values()]
    hooks_before = _hook_count(model)
    try:
        preds, maps = capture_star(model, bus_tensor)
        assert len(calls) == 1 and len(block_calls) == len(maps)
        assert _hook_count(model) == hooks_before
    finally:
        counter.remove()
        for h in block_counters:
            h.remove()
    with torch.no_grad():
        assert torch.equal(preds[0], model(bus_tensor)[0])
    assert _hook_count(model) == 0


def test_hooks_removed_when_forward_fails(model):
    with pytest.raises(RuntimeError):
        capture_star(model, torch.rand(1, 4, 64, 64))  # four channels: the stem convolution refuses it
    assert _hook_count(model) == 0


def test_selected_blocks_only(model, bus_tensor, captured):
    _, maps = capture_star(model, bus_tensor, keys=["2.1", "0.0"])
    assert sorted(maps) == ["0.0", "2.1"]
    assert torch.equal(maps["2.1"].star, captured[1]["2.1"].star)


@pytest.mark.parametrize("keys, image, match", [
    (["9.9"], (1, 3, 64, 64), "unknown block"),
    (None, (3, 64, 64), "one image"),
    (None, (2, 3, 64, 64), "one image"),
])
def test_bad_arguments(model, keys, image, match):
    with pytest.raises(ValueError, match=match):
        capture_star(model, torch.rand(image), keys=keys)
    assert _hook_count(model) == 0


def test_energy_and_top_channels(captured):
    _, maps = captured
    m = maps["2.1"]
    for which in ("act_f1", "f2", "star"):
        t = getattr(m, which)
        energy = m.energy(which)
        assert energy.shape == (m.shape[0],) and (energy >= 0).all()
        torch.testing.assert_close(energy, t.pow(2).mean(dim=(1, 2)))
        top = m.top_channels(5, which)
        assert len(top) == 5 and len(set(top)) == 5
        assert energy[top].tolist() == sorted(energy[top].tolist(), reverse=True)
        assert energy[top[-1]] >= energy.sort(descending=True).values[4]
    assert m.top_channels() == m.top_channels(4, "star")
    assert sorted(m.top_channels(10_000)) == list(range(m.shape[0]))  # k beyond the channel count: all of them


def test_works_on_a_fused_model(bus_tensor):
    fused = build_model("s050").eval().fuse()
    _, maps = capture_star(fused, bus_tensor, keys=["1.0"])
    assert torch.equal(maps["1.0"].star, maps["1.0"].act_f1 * maps["1.0"].f2)
