"""The annotators draw the same pixels in RGB as in BGR (channel order only), in supervision's colours, and never
change their input."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from starnet_demo.viz.annotate import DetectionAnnotator, StatsAnnotator

PERSON_RGB = np.array(sv.ColorPalette.DEFAULT.by_idx(0).as_rgb())


def detections(n: int = 3) -> sv.Detections:
    return sv.Detections(xyxy=np.array([[20 + 150 * i, 60, 120 + 150 * i, 300] for i in range(n)], float),
                         confidence=np.full(n, 0.5), class_id=np.zeros(n, int),
                         data={"class_name": np.array(["person"] * n)})


@pytest.mark.parametrize("smart_labels", [True, False])
def test_detection_annotator_draws_the_same_in_rgb_and_bgr(smart_labels):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 60, (480, 640, 3), np.uint8)  # dark, so no pixel is the box colour by chance
    before = rgb.copy()
    out = DetectionAnnotator(smart_labels=smart_labels).annotate(rgb, detections())
    bgr_out = DetectionAnnotator(rgb=False, smart_labels=smart_labels).annotate(np.ascontiguousarray(rgb[..., ::-1]),
                                                                                 detections())
    assert np.array_equal(rgb, before) and out.shape == rgb.shape and out.flags.c_contiguous
    assert np.array_equal(out, bgr_out[..., ::-1])
    assert (np.abs(out.astype(int) - PERSON_RGB).max(axis=2) < 4).sum() > 1000  # boxes and label backgrounds


def test_stats_line_is_white_on_black_bottom_left_and_input_untouched():
    grey = np.full((480, 640, 3), 128, np.uint8)
    out = StatsAnnotator().annotate(grey, "S1 | 10.0 FPS | 30 ms | 2 objects")
    assert (grey == 128).all()
    changed = (out != 128).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.min() > 400 and xs.min() < 20 and xs.max() < 400  # a line in the bottom-left corner
    drawn = out[changed]
    assert (drawn.max(axis=1) == drawn.min(axis=1)).all()  # greys only: the same in either channel order
    assert (drawn == 0).all(axis=1).mean() > 0.5 and (drawn == 255).all(axis=1).any()  # a black box, white text
