"""YOLOv8 detectors with a StarNet backbone ("Rewrite the Stars", CVPR 2024), on unmodified ultralytics and timm.

Importing the package registers ``StarNetBackbone`` with ultralytics' YAML parser: at once if ultralytics is already
loaded, else the moment it loads. The names below load on first use, so that ``python -m starnet_demo --help``
answers without importing torch.
"""

import importlib
import importlib.util
import os
import sys

# Never let ultralytics pip-install packages or reach the network behind the user's back.
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_OFFLINE", "1")

_TASKS = "ultralytics.nn.tasks"  # the namespace in which ultralytics' YAML parser looks module names up
_NAMES = {"MAIN_VARIANTS": "backbone", "VARIANTS": "backbone", "StarNetBackbone": "backbone", "get_variant": "backbone",
          "BASELINE": "yolo", "as_yolo": "yolo", "build_model": "yolo", "cfg_path": "yolo"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".models.{_NAMES[name]}", __name__), name)


class _RegisterWhenUltralyticsLoads:
    """A meta-path finder that lets ``ultralytics.nn.tasks`` load as usual, then imports ``models.backbone`` (whose
    import registers the backbone there). It removes itself at its first use."""

    def find_spec(self, name, path=None, target=None):
        if name != _TASKS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                importlib.import_module(".models.backbone", __name__)

            spec.loader.exec_module = exec_module
        return spec


if _TASKS in sys.modules:
    importlib.import_module(".models.backbone", __name__)
elif not any(isinstance(f, _RegisterWhenUltralyticsLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenUltralyticsLoads())
