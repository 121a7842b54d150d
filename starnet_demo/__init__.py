"""YOLOv8 detectors with a StarNet backbone ("Rewrite the Stars", CVPR 2024), on unmodified ultralytics and timm.

Importing the package registers ``StarNetBackbone`` with ultralytics' YAML parser.
"""

import os

# Never let ultralytics pip-install packages or reach the network behind the user's back.
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_OFFLINE", "1")

from .models.backbone import MAIN_VARIANTS, VARIANTS, StarNetBackbone, get_variant  # noqa: E402
from .models.yolo import BASELINE, as_yolo, build_model, cfg_path  # noqa: E402

__all__ = ["BASELINE", "MAIN_VARIANTS", "VARIANTS", "StarNetBackbone", "as_yolo", "build_model", "cfg_path",
           "get_variant"]
