"""What 24 new input sizes cost one server process: RSS and the model pool's account after each, under the pool's
budget (``$STARNET_MODEL_MEMORY_MB``, default ``pool.DEFAULT_BUDGET_MB``), one intra-op thread as the app runs.

``python experiments/pool_shapes.py s1 > docs/loadtest/pool-shapes-s1.json`` (progress on stderr); offline, with its
own export cache under /tmp so the exports are fresh.
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

variant = sys.argv[1] if len(sys.argv) > 1 else "s1"
det = get_detector(variant, "cpu", "auto", 640)
img = np.zeros((480, 640, 3), np.uint8)
det.detect(img)
start = rss_bytes()
rows = []
sizes = list(range(160, 160 + 32 * 24, 32))
for s in sizes:
    t = time.perf_counter()
    det.detect(img, imgsz=s)
    stats = POOL.stats()
    rows.append({"imgsz": s, "rss_mb": round(rss_bytes() / 2**20, 1), "pool_mb": round(stats["bytes"] / 2**20, 1),
                 "entries": stats["entries"], "s": round(time.perf_counter() - t, 1)})
    print(rows[-1], file=sys.stderr, flush=True)
print(json.dumps({"variant": variant, "runtime": det.runtime, "precision": det.precision, "cpu": cpu_info()["cpu"],
                  "cpu_count": os.cpu_count(), "command": f"python experiments/pool_shapes.py {variant}",
                  "start_rss_mb": round(start / 2**20, 1), "end_rss_mb": rows[-1]["rss_mb"],
                  "peak_rss_mb": max(r["rss_mb"] for r in rows), "budget_mb": POOL.stats()["budget_bytes"] // 2**20,
                  "shapes": rows}, indent=1))
