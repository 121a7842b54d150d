"""Detections to take away: the same rows as a CSV and a JSON file, written by supervision's ``CSVSink`` and
``JSONSink``, so the columns are supervision's own (``x_min, y_min, x_max, y_max, class_id, confidence, tracker_id``,
then ``class_name`` and any custom fields such as a video's ``frame``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv


class DetectionFiles:
    """A CSV and a JSON sink fed together: ``with DetectionFiles(csv, json) as files: files.append(detections,
    frame=i)``. Boxes are rounded to 0.1 px and confidences to 4 places, as the app's JSON gives them.

    A ``with`` block that fails removes both files: a half-written table is not a result.
    """

    def __init__(self, csv_path: str | Path, json_path: str | Path):
        self.csv, self.json = sv.CSVSink(str(csv_path)), sv.JSONSink(str(json_path))

    @property
    def paths(self) -> list[str]:
        """``[json, csv]``: the order the app lists them for download."""
        return [self.json.file_name, self.csv.file_name]

    def __enter__(self) -> DetectionFiles:
        self.csv.open()
        self.json.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.csv.close()
        self.json.write_and_close()
        if exc_type is not None:
            for path in self.paths:
                Path(path).unlink(missing_ok=True)

    def append(self, detections: sv.Detections, **custom_data: Any) -> None:
        """Add one image's (one frame's) detections; ``custom_data`` goes into every row (``frame=12``)."""
        rounded = dataclasses.replace(
            detections, xyxy=np.round(detections.xyxy.astype(np.float64), 1),
            confidence=None if detections.confidence is None else np.round(detections.confidence.astype(np.float64), 4))
        self.csv.append(rounded, custom_data or None)
        self.json.append(rounded, custom_data or None)
