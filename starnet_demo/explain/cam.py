"""Where each model looks: EigenCAM (Muhammad and Yeasin, 2020) heat maps from grad-cam (pytorch-grad-cam), gradient-
free, so the same recipe applies to every StarNet and to the YOLOv8n reference.

EigenCAM projects a layer's activations on their first principal component: the pattern the layer's channels most
agree on, with no class or box to aim at. The layer is the same for every model, since they share YOLOv8n's neck and
head: ``neck``, the three maps (strides 8, 16, 32) that the Detect head reads, averaged; or ``sppf``, the deepest
backbone map (stride 32), before the neck mixes scales. The boxes come from the very forward pass the CAM watched.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytorch_grad_cam
import supervision as sv
import torch
from torch import nn
from ultralytics.nn.modules import SPPF
from ultralytics.nn.tasks import DetectionModel

from ..errors import InputError
from ..inference.detector import Detector
from ..inference.preprocess import square

LAYERS = ("neck", "sppf")


class Predictions(nn.Module):
    """A ``DetectionModel`` as grad-cam's ``BaseCAM`` wants a model: one tensor out, the raw predictions, instead of
    ultralytics' ``(predictions, features)`` tuple in eval mode."""

    def __init__(self, model: DetectionModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def first_component(activations: np.ndarray) -> np.ndarray:
    """``(B, C, H, W)`` → ``(B, H, W)``: each image's centred activations projected on their first principal
    component, as grad-cam's ``get_2d_projection``, with two differences: a thin SVD (its full one builds an
    ``(H·W)²`` matrix, 330 MB for a stride-8 map at 640 px) and the sign chosen so the strongest response is positive
    (an SVD's sign is arbitrary, and ``BaseCAM`` clips negatives: the wrong sign would light up the background)."""
    out = []
    for a in np.nan_to_num(activations):
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        projection = flat @ np.linalg.svd(flat, full_matrices=False)[2][0]
        out.append(-projection if abs(projection.min()) > abs(projection.max()) else projection)
    return np.float32(out).reshape(len(out), *activations.shape[2:])


class EigenCAM(pytorch_grad_cam.EigenCAM):
    """grad-cam's ``EigenCAM`` with ``first_component`` as its projection."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        return first_component(activations)


def target_layers(model: DetectionModel, layer: str = "neck") -> list[nn.Module]:
    """The modules whose outputs the CAM reads: the Detect head's inputs (``neck``) or the ``SPPF`` (``sppf``)."""
    if layer == "neck":
        return [model.model[i] for i in model.model[-1].f]
    if layer == "sppf":
        return [m for m in model.model if isinstance(m, SPPF)]
    raise InputError(f"unknown layer {layer!r:.20}; choose one of {', '.join(LAYERS)}")


@dataclass
class Cam:
    """One model's heat map (``(H, W)`` in [0, 1], over the whole image) and the detections of the same pass."""

    heat: np.ndarray
    detections: sv.Detections


def eigencam(detector: Detector, image: np.ndarray, layer: str = "neck", conf: float = 0.25, iou: float = 0.45,
             imgsz: int | None = None, classes: list[int] | None = None) -> Cam:
    """EigenCAM of the detector's PyTorch model on an RGB image (square letterbox, as ``Detector.detect``); the map
    is cropped to the picture and resized to the image, so it lies over the image as its boxes do."""
    sq = square(image, imgsz or detector.imgsz)
    with detector.pytorch() as model, torch.no_grad():
        cam = EigenCAM(Predictions(model), target_layers(model, layer))
        try:
            heat = cam(sq.tensor(model), targets=None)[0]
            preds = cam.outputs
        finally:
            cam.activations_and_grads.release()  # not ``with``: its __exit__ swallows IndexError
    top, left, h, w = sq.box
    heat = cv2.resize(heat[top: top + h, left: left + w], (image.shape[1], image.shape[0]),
                      interpolation=cv2.INTER_LINEAR)
    heat = (heat - heat.min()) / (np.ptp(heat) or 1.0)  # over the picture, not its padding
    return Cam(heat, detector.to_detections(preds, (sq.size, sq.size), image.shape[:2], conf, iou, classes))
