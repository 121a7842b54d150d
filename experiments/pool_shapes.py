"""What 24 new input shapes cost one server process: RSS and the model pool's account after each, under the pool's
budget (``$STARNET_MODEL_MEMORY_MB``, default ``pool.DEFAULT_BUDGET_MB``), one intra-op thread as the app runs.

The shapes a server can be asked for: the 18 served image sizes other than the default 640 (``settings.SERVED_SIZES``)
as squares, then 16:9 video frames at 6 sizes (``preprocess.rect_bucket``). ``python experiments/pool_shapes.py s1 >
docs/loadtest/pool-shapes-s1.json`` (progress on stderr); offline, with its own export cache under /tmp so the
exports are fresh.
"""
import json
import os
import sys
import time

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["STARNET_EXPORT_DIR"] = f"/tmp/pool-shapes-exports-{os.getpid()}"

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
from starnet_demo.inference.detector import POOL, get_detector  # noqa: E402
from starnet_demo.inference.devices import cpu_info  # noqa: E402
from starnet_demo.inference.pool import rss_bytes  # noqa: E402
from starnet_demo.inference.preprocess import rect_bucket  # noqa: E402
from starnet_demo.inference.settings import SERVED_SIZES  # noqa: E402

VIDEO_HW = (1080, 1920)
variant = sys.argv[1] if len(sys.argv) > 1 else "s1"
det = get_detector(variant, "cpu", "auto", 640)
photo, frame = np.zeros((480, 640, 3), np.uint8), np.zeros((*VIDEO_HW, 3), np.uint8)
det.detect(photo)
start = rss_bytes()
uses = [(s, False) for s in SERVED_SIZES if s != 640] + [(s, True) for s in (256, 384, 512, 640, 768, 1024)]
assert len({rect_bucket(VIDEO_HW, s) if rect else (s, s) for s, rect in uses} | {(640, 640)}) == 25
rows = []
for size, rect in uses:
    t = time.perf_counter()
    det.detect(frame if rect else photo, imgsz=size, rect=rect)
    stats = POOL.stats()
    rows.append({"shape": list(rect_bucket(VIDEO_HW, size) if rect else (size, size)), "imgsz": size,
                 "rss_mb": round(rss_bytes() / 2**20, 1), "growth_mb": round((rss_bytes() - start) / 2**20, 1),
                 "pool_mb": round(stats["bytes"] / 2**20, 1), "entries": stats["entries"],
                 "s": round(time.perf_counter() - t, 1)})
    print(rows[-1], file=sys.stderr, flush=True)
print(json.dumps({"variant": variant, "runtime": det.runtime, "precision": det.precision, "cpu": cpu_info()["cpu"],
                  "cpu_count": os.cpu_count(), "command": f"python experiments/pool_shapes.py {variant}",
                  "start_rss_mb": round(start / 2**20, 1), "end_rss_mb": rows[-1]["rss_mb"],
                  "peak_rss_mb": max(r["rss_mb"] for r in rows),
                  "peak_growth_mb": max(r["growth_mb"] for r in rows),
                  "budget_mb": POOL.stats()["budget_bytes"] // 2**20, "shapes": rows}, indent=1))
