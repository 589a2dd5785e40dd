#!/usr/bin/env bash
# Every dataset and noise level of bench/RESULTS.md section 7, then the table.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
for D in freiburg1_xyz-groundtruth-s7-160x120 orbit-400-160x120 figure-eight-400-160x120 corridor-400-160x120; do
  for L in toy vggt hard row2 row3; do
    echo "$(date +%T) $D $L"; "$here/run_one.sh" "$D" "$L"
  done
done
"${PEER:-/tmp/peer}/venv/bin/python" "$here/summarize.py"
