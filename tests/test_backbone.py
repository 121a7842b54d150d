"""The StarNet backbone: channels and strides per variant, registration with ultralytics, timm's ImageNet weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn
from ultralytics.nn.modules import Conv

from starnet_demo import VARIANTS, StarNetBackbone, build_model, get_variant
from starnet_demo.models.backbone import OUT_INDICES, blocks
from starnet_demo.models.yolo import backbone

ROOT = str(Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_channels_and_strides_match_timm(variant):
    timm_features = timm.create_model(f"starnet_{variant}", features_only=True, out_indices=OUT_INDICES)
    assert timm_features.feature_info.reduction() == [8, 16, 32]
    assert tuple(timm_features.feature_info.channels()) == VARIANTS[variant].channels
    assert StarNetBackbone(variant).channels == list(VARIANTS[variant].channels)


def test_forward_gives_p3_p4_p5():
    net = StarNetBackbone("s050").eval()
    with torch.no_grad():
        maps = net(torch.rand(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]


def test_registered_with_ultralytics_on_package_import(tmp_path):
    """In a fresh interpreter: ultralytics alone cannot parse our YAML; after ``import starnet_demo`` its own
    ``DetectionModel`` and ``YOLO`` build it, with strides 8/16/32."""
    code = """
import ultralytics.nn.tasks as tasks
assert not hasattr(tasks, "StarNetBackbone")
import starnet_demo
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
yaml = str(starnet_demo.cfg_path("s050"))
for model in (DetectionModel(yaml, verbose=False), YOLO(yaml).model):
    assert type(model.model[0]) is starnet_demo.StarNetBackbone, type(model.model[0])
    assert model.stride.tolist() == [8.0, 16.0, 32.0], model.stride
print("ok")
"""
    # The repo root on the path, as pytest has it: CI runs from a clone without ``pip install -e .``.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


@pytest.mark.parametrize("name", ["s1", "S1", "starnet_s1", "starnet-s1"])
def test_variant_names(name):
    assert get_variant(name).name == "s1"
    assert get_variant(name).timm_name == "starnet_s1"


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="s050.*s4"):
        get_variant("s5")


def test_timm_convbn_pairs_are_ultralytics_convs():
    """Every BatchNorm of the backbone sits in an ultralytics ``Conv`` (so ``fuse()`` folds it), under timm's names."""
    net = StarNetBackbone("s050")
    bns = {name for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    in_convs = {f"{name}.bn" for name, m in net.named_modules() if isinstance(m, Conv)}
    assert bns and bns <= in_convs
    reference = timm.create_model("starnet_s050", features_only=True, out_indices=OUT_INDICES)
    assert {k: v.shape for k, v in net.body.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}


def test_blocks_are_every_star_block_in_order():
    net = StarNetBackbone("s050")
    keys = list(blocks(net))
    depths = timm.create_model("starnet_s050").stages
    expected = [f"{s}.{b}" for s, stage in enumerate(depths)
                for b in range(sum(type(m).__name__ == "Block" for m in stage))]
    assert keys == expected
    assert all(hasattr(blk, name) for blk in blocks(net).values() for name in ("f1", "f2", "act", "g"))


def _timm_key(feature_key: str) -> str:
    """``stages_2.1.f1.conv.weight`` (timm's features_only names) -> ``stages.2.1.f1.conv.weight``."""
    head, _, rest = feature_key.partition(".")
    return f"{head.replace('_', '.')}.{rest}"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_imagenet_weights_from_local_file(tmp_path, suffix):
    """timm's pretrained mechanism, offline: a classifier checkpoint file loads into the detector's backbone."""
    torch.manual_seed(3)
    classifier = timm.create_model("starnet_s050")
    with torch.no_grad():
        for v in classifier.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.1)  # nothing like the default init, so a silent no-op would show
    path = tmp_path / f"starnet_s050{suffix}"
    state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)

    loaded = backbone(build_model("s050", nc=2, pretrained=path)).body.state_dict()
    assert len(loaded) > 100
    for key, value in loaded.items():
        assert torch.equal(value, state[_timm_key(key)]), key


def test_imagenet_weights_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model("s050", pretrained=tmp_path / "absent.safetensors")
