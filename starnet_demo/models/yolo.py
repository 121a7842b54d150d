"""YOLOv8-StarNet detectors: build them from the variant table's configs, wrap them for ultralytics' workflows.

Everything here is plain ultralytics: a ``DetectionModel`` built from ``config.model_config(variant)`` trains,
validates, predicts and exports through ultralytics' own trainer, validator, predictor and exporter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from . import config
from .backbone import StarNetBackbone

BASELINE = "yolov8n"

# YOLOv8n's layer k (SPPF at 9, then neck and head) is our layer k - TEACHER_OFFSET.
TEACHER_OFFSET = 2
TEACHER_FIRST_SHARED = 9
# Our first layer taken from the teacher (its SPPF): everything from here on is the teacher's.
OWN_TEACHER_START = TEACHER_FIRST_SHARED - TEACHER_OFFSET
# Layers whose outputs the distillation matches: (ours, YOLOv8n's) for P3, P4, P5.
ADAPTER_LAYERS = (4, 5, 6)
TEACHER_FEATURE_LAYERS = (4, 6, 8)

COCO_NAMES: dict[int, str] = dict(enumerate(
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle "
    "wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven "
    "toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush".replace("_", "~").split()
))
COCO_NAMES = {k: v.replace("~", " ") for k, v in COCO_NAMES.items()}


def cfg_path(variant: str) -> Path:
    """The YAML file of a variant (``config.cfg_path``); ``yolov8n`` gives ultralytics' own YOLOv8n config name."""
    return Path("yolov8n.yaml") if variant == BASELINE else config.cfg_path(variant)


def build_model(variant: str, nc: int = 80, names: Mapping[int, str] | None = None,
                pretrained: bool | str | Path = False, verbose: bool = False,
                cls: type[DetectionModel] = DetectionModel) -> DetectionModel:
    """A fresh YOLOv8-StarNet (or the plain ``yolov8n`` baseline) with ``nc`` classes.

    ``pretrained`` loads ImageNet backbone weights through timm: True fetches timm's, a path uses a local file.
    ``cls`` lets a training stage build a DetectionModel subclass with its own loss.
    """
    if variant == BASELINE:
        model = cls("yolov8n.yaml", nc=nc, verbose=verbose)
    else:
        cfg = {**config.model_config(variant, nc), "yaml_file": str(cfg_path(variant))}
        model = cls(cfg, nc=nc, verbose=verbose)
    model.names = dict(names) if names is not None else (COCO_NAMES if nc == 80 else {i: str(i) for i in range(nc)})
    if pretrained:
        backbone(model).load_pretrained(pretrained)
    return model


def backbone(model: DetectionModel) -> StarNetBackbone:
    """The StarNet layer of a YOLOv8-StarNet."""
    first = model.model[0]
    if not isinstance(first, StarNetBackbone):
        raise TypeError("not a YOLOv8-StarNet model (layer 0 is not StarNetBackbone)")
    return first


def variant_of(model: DetectionModel) -> str:
    """``s1``…``s4`` etc., or ``yolov8n`` for the baseline."""
    first = model.model[0]
    return first.variant if isinstance(first, StarNetBackbone) else BASELINE


def as_yolo(model: DetectionModel) -> YOLO:
    """Wrap a built model in ultralytics' ``YOLO`` so train/val/predict/export run through ultralytics itself, with
    the torch CPU threads this process had when it was wrapped."""
    yolo = YOLO(str(cfg_path(variant_of(model))), task="detect")
    model.args, model.task = yolo.model.args, yolo.task  # as YOLO() sets them on its own builds; export reads task
    yolo.model = model
    # What ultralytics' own ``YOLO.load(module)`` sets: without a ckpt, ``train()`` would start from a fresh YAML build.
    yolo.ckpt = {"model": model}
    keep_torch_threads(yolo)
    return yolo


def keep_torch_threads(runner: Any) -> None:
    """Hold this process's torch CPU threads through ``runner``'s (a ``YOLO``'s or a validator's) predict, val and
    export. Ultralytics' ``select_device`` sets them to min(8, cores - 1) for the whole process whenever it predicts,
    validates or exports: on a 2-core machine, one thread from then on, for every request served or runtime timed."""
    threads = torch.get_num_threads()
    for event in ("on_predict_start", "on_val_start", "on_export_end"):
        runner.add_callback(event, lambda _: torch.set_num_threads(threads))


def forward_layers(model: DetectionModel, x: torch.Tensor, layers: Iterable[int]) -> list[torch.Tensor]:
    """Outputs of the given layer indices, running the network only as far as the deepest of them."""
    wanted = list(layers)
    last = max(wanted)
    y: list = []
    for m in model.model:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x)
        if m.i == last:
            break
    return [y[i] for i in wanted]


def teacher_shared_state(teacher: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a YOLOv8n state dict's SPPF, neck and head tensors to our layer numbers."""
    out = {}
    for key, value in teacher.items():
        parts = key.split(".")
        if parts[0] == "model" and int(parts[1]) >= TEACHER_FIRST_SHARED:
            parts[1] = str(int(parts[1]) - TEACHER_OFFSET)
            out[".".join(parts)] = value
    return out


def init_from_teacher(model: DetectionModel, teacher: Mapping[str, torch.Tensor]) -> int:
    """Copy a YOLOv8n's SPPF, neck and head into ``model``; returns the number of tensors copied.

    The head's class branch (``Detect.cv3``, whose widths follow the class count) is left out when ``model`` has a
    different number of classes than the teacher.
    """
    shared = teacher_shared_state(teacher)
    own = model.state_dict()
    cls_branch = f"model.{len(model.model) - 1}.cv3."
    if any(k.startswith(cls_branch) and k in own and own[k].shape != v.shape for k, v in shared.items()):
        shared = {k: v for k, v in shared.items() if not k.startswith(cls_branch)}
    bad = [k for k, v in shared.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"teacher does not match the YOLOv8n neck/head layout, e.g. {bad[:3]}")
    model.load_state_dict(shared, strict=False)
    return len(shared)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary(variant: str, imgsz: int = 640) -> dict[str, float | int | str]:
    """Parameters (backbone and whole detector) and GFLOPs at ``imgsz``, as ultralytics counts them."""
    from ultralytics.utils.torch_utils import get_flops

    model = build_model(variant)
    first = model.model[0]
    return {
        "variant": variant,
        "backbone_params": count_params(first) if isinstance(first, StarNetBackbone) else count_params(
            model.model[:10]),
        "params": count_params(model),
        "gflops": round(get_flops(model, imgsz), 2),
        "imgsz": imgsz,
    }
