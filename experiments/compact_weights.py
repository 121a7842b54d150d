"""Store S1-S4 compactly (the large conv weights as int8, ``starnet_demo.weights.compact``) and measure the cost.

For each variant the fp16 weights in ``--weights`` are rewritten packed (config, recipe and notes kept), then the
packed and the fp16 weights are evaluated on the held-out split, paired (the same resamplings of the images for
both). Weights that move mAP50 or mAP50-95 by more than ``--tolerance`` are put back as they were, and the next of
``compact.SCOPES`` (a narrower packing) is tried. The figures go to
``--out`` and, as a note and the metrics, into each weights config. Run from the repository root:
``PYTHONPATH=. python experiments/compact_weights.py --data ../shared/datasets/coco-mini/data.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from starnet_demo.training.evaluate import evaluate
from starnet_demo.weights.compact import SCOPES, describe
from starnet_demo.weights.files import load_weights, read_config, save_weights, weight_files

GENERATED = ("format", "variant", "nc", "names", "imgsz", "dtype", "int8", "int8_scope", "file", "sha256")


def compact(variant: str, folder: Path, data: str, tolerance: float, split: str, scope: str,
            source: Path | None = None) -> dict:
    """Pack ``source``'s fp16 weights (default: ``folder``'s) into ``folder`` if they keep their figures."""
    tensors, config_path = weight_files(variant, folder)
    with tempfile.TemporaryDirectory(prefix="fp16-") as tmp:
        old_tensors, old_config = Path(tmp) / tensors.name, Path(tmp) / config_path.name
        shutil.copy2(weight_files(variant, source or folder)[0], old_tensors)
        shutil.copy2(weight_files(variant, source or folder)[1], old_config)
        before, config = load_weights(old_config)
        meta = {k: v for k, v in config.items() if k not in GENERATED}
        save_weights(before, folder, meta=meta, int8=scope or True)
        after, _ = load_weights(config_path)
        result = evaluate(after, data, weights_file=tensors, bootstrap=1000, against=before,
                          against_file=old_tensors)
        diff = result["against"]
        kept = max(abs(diff["map50_difference"]), abs(diff["map50_95_difference"])) <= tolerance
        record = {"variant": variant, "scope": scope, "kept": kept, "bytes_fp16": old_tensors.stat().st_size,
                  "bytes_int8": tensors.stat().st_size, "fp16_sha256": diff["weights_sha256"],
                  "int8_sha256": result["weights_sha256"],
                  "fp16": {"map50": diff["map50"], "map50_95": diff["map50_95"]},
                  "int8": {"map50": result["map50"], "map50_95": result["map50_95"],
                           "map50_se": result["map50_se"], "map50_95_se": result["map50_95_se"]},
                  **{k: diff[k] for k in ("map50_difference", "map50_95_difference", "map50_difference_se",
                                          "map50_95_difference_se")}}
        if not kept:
            shutil.copy2(old_tensors, tensors)
            shutil.copy2(old_config, config_path)
            return record
    config = read_config(config_path)
    config["notes"] = [*config.get("notes", []), (
        f"Stored compactly (2026-12-04, experiments/compact_weights.py): {describe(scope)}; "
        f"{record['bytes_fp16']:,} -> {record['bytes_int8']:,} bytes. Held-out mAP50 / mAP50-95 "
        f"{record['int8']['map50']:.4f} / {record['int8']['map50_95']:.4f} against the fp16 file's "
        f"{record['fp16']['map50']:.4f} / {record['fp16']['map50_95']:.4f} (sha256 {record['fp16_sha256'][:8]}...): "
        f"{record['map50_difference']:+.4f} (paired s.e. {record['map50_difference_se']:.4f}) / "
        f"{record['map50_95_difference']:+.4f} ({record['map50_95_difference_se']:.4f}); "
        "docs/training/weights-int8.json. Loading dequantizes to float32; training starts from that.")]
    keep = {k: v for k, v in config.get("metrics", {}).items() if k.startswith("teacher_")}
    config["metrics"] = {"data": split, **{k: result[k] for k in ("map50", "map50_se", "map50_95", "map50_95_se",
                                                                   "precision", "recall", "images", "imgsz", "batch",
                                                                   "device")}, **keep}
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="data YAML whose val split is held out")
    p.add_argument("--weights", default="weights")
    p.add_argument("--source", type=Path, help="folder of the fp16 weights to pack (default: --weights)")
    p.add_argument("--variants", default="s1,s2,s3,s4")
    p.add_argument("--tolerance", type=float, default=0.002)
    p.add_argument("--split", default="coco-mini val (128 images, held out)")
    p.add_argument("--scopes", nargs="+", default=list(SCOPES), help="key patterns to try in turn ('' = all)")
    p.add_argument("--out", default="docs/training/weights-int8.json")
    args = p.parse_args()
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.is_file() else []
    for variant in args.variants.split(","):
        for scope in args.scopes:  # the widest packing that keeps the figures
            record = compact(variant, Path(args.weights), args.data, args.tolerance, args.split, scope, args.source)
            records = [r for r in records if (r["variant"], r.get("scope", "")) != (variant, scope)] + [record]
            out.write_text(json.dumps(records, indent=2) + "\n")
            print(json.dumps(record), flush=True)
            if record["kept"]:
                break


if __name__ == "__main__":
    main()
