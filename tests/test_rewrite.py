"""The inference rewrites compute the same function as the model they rewrite."""

from __future__ import annotations

import pytest
import torch
from app_support import with_real_batchnorms
from torch import nn

from starnet_demo.models.backbone import blocks
from starnet_demo.models.rewrite import MergedStarBlock, fold_batchnorms, merge_star_pairs, optimise
from starnet_demo.models.yolo import BASELINE, backbone, build_model


def assert_same_predictions(a: torch.Tensor, b: torch.Tensor) -> None:
    """Boxes (pixels) within 1e-3 px, class probabilities within 1e-6: float rounding, nothing more."""
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-3)
    torch.testing.assert_close(a[:, 4:], b[:, 4:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["s050", BASELINE])
def test_fold_leaves_no_batchnorm(variant):
    model = fold_batchnorms(with_real_batchnorms(variant))
    assert not [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_merge_replaces_every_star_pair():
    model = optimise(with_real_batchnorms("s050"), "fold")
    n_blocks = len(blocks(backbone(model)))
    assert merge_star_pairs(model) == n_blocks > 0
    for block in blocks(backbone(model)).values():
        assert isinstance(block, MergedStarBlock)
        assert not hasattr(block, "f1") and not hasattr(block, "f2")
        assert block.f12.out_channels == 2 * block.g.conv.in_channels
    assert merge_star_pairs(model) == 0  # idempotent
    assert merge_star_pairs(build_model(BASELINE)) == 0  # nothing to merge in YOLOv8n


def test_optimise_leaves_the_original_alone():
    model = with_real_batchnorms("s050")
    optimise(model, "fold+merge")
    first = next(iter(blocks(backbone(model)).values()))
    assert hasattr(first, "f1") and hasattr(first.dwconv, "bn")


@pytest.mark.parametrize("rewrite", ["fold", "fold+merge"])
def test_rewrites_are_exact_on_noise(rewrite):
    model = with_real_batchnorms("s050")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same_predictions(optimise(model, rewrite)(x)[0], model(x)[0])


@pytest.mark.parametrize("variant", ["s1", BASELINE])
def test_rewrites_are_exact_on_a_photo(variant, bus_tensor):
    model = with_real_batchnorms(variant)
    with torch.no_grad():
        reference = model(bus_tensor)[0]
        assert_same_predictions(optimise(model, "fold+merge")(bus_tensor)[0], reference)


def test_unknown_rewrite_is_refused():
    with pytest.raises(ValueError, match="unknown rewrite"):
        optimise(build_model("s050"), "fold+prune")
