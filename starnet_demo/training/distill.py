"""Moving a COCO-trained YOLOv8n's knowledge into a StarNet backbone.

The pieces, used by the ``distill`` and ``finetune`` stages of ``starnet_demo.train``:

* the student takes the teacher's SPPF, neck and head (``model.init_from_teacher``);
* ``DistillStudent`` trains the StarNet backbone and its 1×1 adapters to reproduce the teacher's P3/P4/P5 maps
  (normalised MSE). No labels are involved, so every image counts. Ultralytics' own ``distill_model`` cannot do this:
  it distils the neck's outputs next to a detection loss, and needs labels and a compatible neck already;
* ``DistillStudent.output_kd`` adds, with that weight, the divergence of the (frozen) head's outputs from the
  teacher's (``output_loss``): the backbone's remaining feature error then goes where the head is sensitive to it;
* ``DistillStudent.train_head`` lets that output term train the student's copies of the SPPF, neck and head as well,
  so that they adapt to the features StarNet gives them instead of those YOLOv8n's backbone gave;
* ``DistillStudent.freeze_bn`` keeps every BatchNorm in eval mode while training, so the loss is computed on the
  function that is deployed. Continuing from trained weights with small CPU batches (16) without it, the backbone
  came to rely on batch statistics: P4 feature loss 0.44 in train mode, 23531 in eval mode
  (``docs/training/bn-drift.json``);
* ``reestimate_bn`` repairs weights whose eval mode has drifted from their train mode: it sets each BatchNorm's
  statistics, in forward order, to those of its inputs in eval mode, so every layer sees what it will see deployed.
  ``reestimate_bn_if_better`` keeps that only where it lowers the eval-mode feature loss;
* ``recalibrate_bn`` makes the teacher's folded BatchNorms (identity plus bias, exact only in eval mode) trainable
  by giving them real statistics while leaving the eval-mode function unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ..models.yolo import (
    ADAPTER_LAYERS,
    BASELINE,
    OWN_TEACHER_START,
    TEACHER_FEATURE_LAYERS,
    build_model,
    forward_layers,
)

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


def output_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], reg_max: int) -> torch.Tensor:
    """How far a head's raw outputs (``Detect.forward_head``) are from the teacher's: 0 for an exact copy.

    Class scores: the Bernoulli KL divergence from the teacher's probabilities, over every anchor, so that false
    positives cost too. Boxes: the KL divergence of each side's distribution (DFL bins), weighted by the teacher's
    confidence at the anchor, as background anchors' boxes are never used. Both are divided by the teacher's summed
    confidence, as ultralytics divides its detection loss by the summed target scores.
    """
    p = teacher["scores"].float().sigmoid()
    bernoulli_kl = F.binary_cross_entropy_with_logits(student["scores"].float(), p, reduction="none") - (
        -torch.xlogy(p, p) - torch.xlogy(1 - p, 1 - p))
    weight = p.amax(dim=1)  # (batch, anchors)
    b, _, a = teacher["boxes"].shape
    t_log = teacher["boxes"].float().view(b, 4, reg_max, a).log_softmax(2)
    s_log = student["boxes"].float().view(b, 4, reg_max, a).log_softmax(2)
    box_kl = (t_log.exp() * (t_log - s_log)).sum(dim=(1, 2))
    return (bernoulli_kl.sum() + (box_kl * weight).sum()) / weight.sum().clamp_min(1)


class DistillStudent(DetectionModel):
    """A YOLOv8-StarNet whose training loss is feature regression onto the teacher's backbone maps, plus
    ``output_kd`` times ``output_loss`` on the head's outputs.

    The teacher is referenced by path, not held as a submodule, so it is never trained, averaged by EMA, pickled
    into checkpoints or counted as the student's parameters. The SPPF, neck and head taken from the teacher always run
    in eval mode: their BatchNorms are folded, which is exact only in eval mode. They are frozen unless ``train_head``.
    """

    teacher_path: str = ""
    freeze_bn: bool = False
    output_kd: float = 0.0
    train_head: bool = False
    criterion = None  # the loss below needs no ultralytics criterion

    def train(self, mode: bool = True) -> DistillStudent:
        """``nn.Module.train``, leaving BatchNorms in eval mode (running statistics fixed) when ``freeze_bn``, and
        the layers taken from the teacher in eval mode always."""
        super().train(mode)
        if mode:
            self.model[OWN_TEACHER_START:].eval()
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def init_criterion(self):
        return None

    def loss(self, batch: dict, preds=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = batch["img"]
        teacher = load_teacher(self.teacher_path, str(img.device))
        head, teacher_head = self.model[-1], teacher.model[-1]
        # The output term needs both networks up to their heads' inputs; the features alone need only backbones.
        ours, theirs = list(ADAPTER_LAYERS), list(TEACHER_FEATURE_LAYERS)
        if self.output_kd:
            ours, theirs = ours + list(head.f), theirs + list(teacher_head.f)
        with torch.no_grad():
            targets = forward_layers(teacher, img, theirs)
        outputs = forward_layers(self, img, ours)
        losses = feature_loss(outputs[:len(LEVELS)], targets[:len(LEVELS)])
        items = dict(zip(LEVELS, losses.detach(), strict=True))
        if self.output_kd:
            with torch.no_grad():
                target_head = teacher_head.forward_head(targets[len(LEVELS):], **teacher_head.one2many)
            out = self.output_kd * output_loss(head.forward_head(outputs[len(LEVELS):], **head.one2many),
                                               target_head, head.reg_max)
            losses, items["out"] = torch.cat([losses, out[None]]), out.detach()
        return losses * img.shape[0], items


def _is_folded(bn: nn.BatchNorm2d) -> bool:
    """True for a BatchNorm left by folding: zero mean and variance 1 - eps, so it is identity plus bias."""
    return bool((bn.running_mean == 0).all() and torch.allclose(bn.running_var, torch.full_like(bn.running_var,
                                                                                                  1 - bn.eps)))


class _Moments:
    """Per-channel mean and (biased) variance of a BatchNorm's inputs, accumulated over batches in float64."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | float = 0.0
        self.sum_sq: torch.Tensor | float = 0.0
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.sum = self.sum + x.sum(dim=(0, 2, 3))
        self.sum_sq = self.sum_sq + (x * x).sum(dim=(0, 2, 3))
        self.count += x.numel() // x.shape[1]

    def mean_var(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.sum / self.count
        return mu.to(dtype), (self.sum_sq / self.count - mu * mu).clamp_min(0).to(dtype)


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
    moments = {bn: _Moments() for bn in bns}
    handles = [bn.register_forward_pre_hook(lambda m, a: moments[m].add(a[0])) for bn in bns]
    was_training = model.training
    model.eval()
    try:
        for img in batches:
            model(img)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for bn, m in moments.items():
        mu, var = m.mean_var(bn.running_mean.dtype)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bn.bias.add_(scale * (mu - bn.running_mean))
        bn.weight.mul_(torch.sqrt(var + bn.eps) / torch.sqrt(bn.running_var + bn.eps))
        bn.running_mean.copy_(mu)
        bn.running_var.copy_(var)
    return len(bns)


@torch.no_grad()
def eval_feature_loss(student: DistillStudent, batches: Iterable[torch.Tensor]) -> float:
    """The student's training loss (``DistillStudent.loss``) in eval mode, the deployed function: summed over levels
    and averaged over ``batches``."""
    was_training = student.training
    student.eval()
    try:
        losses = [float(sum(student.loss({"img": x})[1].values())) for x in batches]
    finally:
        student.train(was_training)
    return sum(losses) / max(1, len(losses))


@torch.no_grad()
def reestimate_bn_if_better(model: nn.Module, batches: Iterable[torch.Tensor], modules: nn.Module | None,
                            loss: Callable[[nn.Module, list[torch.Tensor]], float]) -> tuple[float, float, bool]:
    """``reestimate_bn``, undone unless it lowers ``loss(model, batches)``; returns (before, after, kept).

    Re-estimation repairs weights whose eval mode drifted, but weights whose statistics were right can get worse:
    the layers downstream were trained for the old statistics, and star blocks amplify the change.
    """
    batches = list(batches)
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone())
             for bn in (modules or model).modules() if isinstance(bn, nn.BatchNorm2d)}
    before = loss(model, batches)
    reestimate_bn(model, batches, modules)
    after = loss(model, batches)
    kept = after < before
    if not kept:
        for bn, (mean, var) in saved.items():
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
    return before, after, kept


class _Reached(Exception):
    """Raised by a forward pre-hook to stop the forward pass at the BatchNorm being measured."""


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor], modules: nn.Module | None = None) -> int:
    """Set the statistics of every BatchNorm in ``modules`` (default: all of ``model``) to its eval-mode inputs'.

    Layer by layer in forward order, with everything upstream already re-estimated and in eval mode, unlike
    precise-BN, whose train-mode passes normalise upstream layers with per-batch statistics. That difference matters
    for star blocks: the product of two branches amplifies small normalisation errors block after block. One pass
    over ``batches`` per BatchNorm, each stopped at that layer. Changes the eval-mode function; returns the count.
    """
    batches = list(batches)
    scope = [m for m in (modules or model).modules() if isinstance(m, nn.BatchNorm2d)]
    if not batches or not scope:
        return 0
    order: list[nn.Module] = []
    handles = [bn.register_forward_pre_hook(lambda m, a: order.append(m) if m not in order else None) for bn in scope]
    was_training = model.training
    model.eval()
    try:
        model(batches[0])  # records the forward order
        for h in handles:
            h.remove()
        for bn in order:
            m = _Moments()

            def hook(_, args, m=m):
                m.add(args[0])
                raise _Reached

            handle = bn.register_forward_pre_hook(hook)
            try:
                for img in batches:
                    with contextlib.suppress(_Reached):
                        model(img)
            finally:
                handle.remove()
            mu, var = m.mean_var(bn.running_mean.dtype)
            bn.running_mean.copy_(mu)
            bn.running_var.copy_(var)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return len(order)
