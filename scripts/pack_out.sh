#!/usr/bin/env bash
# Ship a GPU run's exported weights and logs back through $OUT: one tar, split under the 16 MiB per-file limit.
set -euo pipefail
PROJECT=${PROJECT:-runs/gpu}
cd "$PROJECT"
tar cf - $(ls -d */export */results.csv */args.yaml 2>/dev/null) | split -b 15M -d - "$OUT/run.tar.part"
ls -la "$OUT"
