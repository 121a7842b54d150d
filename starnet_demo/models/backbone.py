"""StarNet (timm) as a YOLO backbone, registered with ultralytics' YAML parser.

timm builds the network; this module only adapts it: it returns the stride-8/16/32 maps as a list (picked apart by
ultralytics' ``Index`` layers) and re-expresses timm's ``ConvBN`` pairs as ultralytics ``Conv`` modules with an
identity activation, so that ultralytics' own ``DetectionModel.fuse()`` folds their BatchNorms too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from ultralytics.nn import tasks
from ultralytics.nn.modules import Conv

OUT_INDICES = (1, 2, 3)  # stages at strides 8, 16, 32


@dataclass(frozen=True)
class Variant:
    """One StarNet size, as timm defines it: its name, P3/P4/P5 channels, blocks per stage, and whether timm has
    ImageNet weights for it. The model configs (``config.py``) are generated from this table."""

    name: str
    channels: tuple[int, int, int]
    depths: tuple[int, int, int, int]
    imagenet: bool

    @property
    def timm_name(self) -> str:
        return f"starnet_{self.name}"

    @property
    def block_keys(self) -> list[str]:
        """``stage.index`` of every star block, in forward order (as ``blocks`` keys them)."""
        return [f"{stage}.{i}" for stage, depth in enumerate(self.depths) for i in range(depth)]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("s050", (32, 64, 128), (1, 1, 3, 1), False),
        Variant("s100", (40, 80, 160), (1, 2, 4, 1), False),
        Variant("s150", (48, 96, 192), (1, 2, 4, 2), False),
        Variant("s1", (48, 96, 192), (2, 2, 8, 3), True),
        Variant("s2", (64, 128, 256), (1, 2, 6, 2), True),
        Variant("s3", (64, 128, 256), (2, 2, 8, 4), True),
        Variant("s4", (64, 128, 256), (3, 3, 12, 5), True),
    )
}
MAIN_VARIANTS = ("s1", "s2", "s3", "s4")


def get_variant(name: str) -> Variant:
    """Look a variant up by name (``s1``, ``S1`` or ``starnet_s1``), failing with the list of valid names."""
    key = name.lower().removeprefix("starnet_").removeprefix("starnet-")
    if key not in VARIANTS:
        raise ValueError(f"unknown StarNet variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


class ConvBN(Conv):
    """timm's ``ConvBN`` (conv then BatchNorm, no activation) as an ultralytics ``Conv``.

    The parameter names (``conv.*``, ``bn.*``) are timm's, so timm checkpoints load unchanged, and ultralytics'
    ``fuse()`` recognises the module and folds the BatchNorm into the convolution.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        nn.Module.__init__(self)
        self.conv, self.bn, self.act = conv, bn, nn.Identity()


def _as_ultralytics_convs(module: nn.Module) -> None:
    """Replace every timm ConvBN that has a BatchNorm, in place."""
    for name, child in module.named_children():
        if type(child).__name__ == "ConvBN" and hasattr(child, "bn") and not isinstance(child, Conv):
            setattr(module, name, ConvBN(child.conv, child.bn))
        else:
            _as_ultralytics_convs(child)


def create_timm_features(variant: str, pretrained: bool | str | Path = False) -> nn.Module:
    """timm's StarNet with ``features_only``; ``pretrained`` may be True (timm's hub weights) or a local file."""
    v = get_variant(variant)
    kwargs: dict = {}
    if isinstance(pretrained, (str, Path)) and not isinstance(pretrained, bool):
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights file not found: {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    return timm.create_model(v.timm_name, pretrained=bool(pretrained), features_only=True, out_indices=OUT_INDICES,
                             **kwargs)


class StarNetBackbone(nn.Module):
    """YAML layer ``[-1, 1, StarNetBackbone, [s1]]``: image in, ``[P3, P4, P5]`` out."""

    def __init__(self, variant: str = "s1"):
        super().__init__()
        self.variant = get_variant(variant).name
        self.body = create_timm_features(self.variant)
        _as_ultralytics_convs(self.body)

    @property
    def channels(self) -> list[int]:
        return list(self.body.feature_info.channels())

    def load_pretrained(self, pretrained: bool | str | Path = True) -> None:
        """Load ImageNet weights through timm's pretrained mechanism (hub, or a local file override)."""
        self.body.load_state_dict(create_timm_features(self.variant, pretrained).state_dict())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


def blocks(backbone: StarNetBackbone) -> dict[str, nn.Module]:
    """Every star block, keyed ``stage.block`` (e.g. ``"2.5"``), in forward order."""
    out = {}
    for stage_name, stage in backbone.body.named_children():
        if not stage_name.startswith("stages"):
            continue
        stage_idx = stage_name.split("_")[-1]
        for idx, module in enumerate(m for m in stage if hasattr(m, "f1") and hasattr(m, "f2")):
            out[f"{stage_idx}.{idx}"] = module
    return out


# Ultralytics resolves YAML module names in ``ultralytics.nn.tasks``' namespace; registering there is the supported
# way to add a layer without editing ultralytics.
tasks.StarNetBackbone = StarNetBackbone
