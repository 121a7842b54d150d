"""Moving a COCO-trained YOLOv8n's knowledge into a StarNet backbone.

Three pieces, used by the ``distill`` and ``finetune`` stages of ``starnet_demo.train``:

* the student takes the teacher's SPPF, neck and head (``model.init_from_teacher``);
* ``DistillStudent`` trains the StarNet backbone and its 1×1 adapters to reproduce the teacher's P3/P4/P5 maps
  (normalised MSE). No labels are involved, so every image counts. Ultralytics' own ``distill_model`` cannot do this:
  it distils the neck's outputs next to a detection loss, and needs labels and a compatible neck already;
* ``recalibrate_bn`` makes the teacher's folded BatchNorms (identity plus bias, exact only in eval mode) trainable
  by giving them real statistics while leaving the eval-mode function unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from .model import ADAPTER_LAYERS, BASELINE, TEACHER_FEATURE_LAYERS, build_model, forward_layers

LEVELS = ("p3", "p4", "p5")


@lru_cache(maxsize=4)
def load_teacher(path: str, device: str = "cpu") -> DetectionModel:
    """The frozen YOLOv8n teacher from an fp32 safetensors state dict (one copy per path and device)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    teacher = build_model(BASELINE)
    teacher.load_state_dict(load_file(path))
    return teacher.to(device).eval().requires_grad_(False)


def feature_loss(student: Iterable[torch.Tensor], teacher: Iterable[torch.Tensor]) -> torch.Tensor:
    """Per level, the MSE divided by the target's variance: 1 for a constant guess, 0 for an exact copy."""
    losses = []
    for s, t in zip(student, teacher, strict=True):
        s, t = s.float(), t.float()
        losses.append(((s - t) ** 2).mean() / (t.var(dim=(0, 2, 3)).mean() + 1e-6))
    return torch.stack(losses)


class DistillStudent(DetectionModel):
    """A YOLOv8-StarNet whose training loss is feature regression onto the teacher's backbone maps.

    The teacher is referenced by path, not held as a submodule, so it is never trained, averaged by EMA, pickled
    into checkpoints or counted as the student's parameters.
    """

    teacher_path: str = ""
    criterion = None  # the loss below needs no ultralytics criterion

    def init_criterion(self):
        return None

    def loss(self, batch: dict, preds=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = batch["img"]
        teacher = load_teacher(self.teacher_path, str(img.device))
        with torch.no_grad():
            targets = forward_layers(teacher, img, TEACHER_FEATURE_LAYERS)
        losses = feature_loss(forward_layers(self, img, ADAPTER_LAYERS), targets)
        return losses * img.shape[0], dict(zip(LEVELS, losses.detach(), strict=True))


def _is_folded(bn: nn.BatchNorm2d) -> bool:
    """True for a BatchNorm left by folding: zero mean and variance 1 - eps, so it is identity plus bias."""
    return bool((bn.running_mean == 0).all() and torch.allclose(bn.running_var, torch.full_like(bn.running_var,
                                                                                                  1 - bn.eps)))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], only_folded: bool = True) -> int:
    """Give BatchNorms the statistics of their real inputs, leaving the eval-mode output unchanged.

    With new statistics (mu, var), eval output w*(x-m)/sqrt(v+e)+b stays the same when w' = w*sqrt(var+e)/sqrt(v+e)
    and b' = b + w*(mu-m)/sqrt(v+e). Train mode then normalises with batch statistics close to (mu, var) and starts
    near the eval-mode function instead of far from it. Returns the number of BatchNorms changed.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and (not only_folded or _is_folded(m))]
    if not bns:
        return 0
    sums: dict[nn.Module, list] = {bn: [0.0, 0.0, 0] for bn in bns}

    def hook(bn, args):
        x = args[0].float()
        acc = sums[bn]
        acc[0] = acc[0] + x.sum(dim=(0, 2, 3))
        acc[1] = acc[1] + (x * x).sum(dim=(0, 2, 3))
        acc[2] += x.numel() // x.shape[1]

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    was_training = model.training
    model.eval()
    try:
        for img in batches:
            model(img)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for bn, (s, ss, n) in sums.items():
        mu = s / n
        var = (ss / n - mu * mu).clamp_min(0)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bn.bias.add_(scale * (mu - bn.running_mean))
        bn.weight.mul_(torch.sqrt(var + bn.eps) / torch.sqrt(bn.running_var + bn.eps))
        bn.running_mean.copy_(mu)
        bn.running_var.copy_(var)
    return len(bns)
