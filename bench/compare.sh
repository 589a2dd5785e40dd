#!/usr/bin/env bash
# Rust (vggt-bench, burn Flex CPU backend) vs upstream PyTorch VGGT on the CPU, same config, same
# thread count, sides run alternately. Each side reports the median of RUNS timed forwards after
# one warm-up. The PyTorch side lives outside this repository: point the variables below at it.
#
#   bench/compare.sh tiny_a            # fixture config, S=3, 56x84
#   bench/compare.sh vggt1b 1          # VGGT-1B shapes, random weights, S=1, 392x518
#
# Environment (defaults are the scratch locations of the reference machine):
#   VGGT_SRC        folder containing the upstream `vggt/` package
#   PYTORCH_PYTHON  python with torch, safetensors, psutil
#   PYTORCH_BENCH   pytorch_bench_cpu.py
#   THREADS (2), RUNS (3), ROUNDS (1: one Rust run then one PyTorch run per round)
set -euo pipefail
cd "$(dirname "$0")/.."
export VGGT_SRC="${VGGT_SRC:-/work/scratch/vggt_ref}"
PYTORCH_PYTHON="${PYTORCH_PYTHON:-/work/scratch/venv/bin/python}"
PYTORCH_BENCH="${PYTORCH_BENCH:-/work/scratch/pytorch_bench_cpu.py}"
THREADS="${THREADS:-2}"
RUNS="${RUNS:-3}"
ROUNDS="${ROUNDS:-1}"
CONFIG="${1:-tiny_a}"
FRAMES="${2:-1}"

cargo build -p vggt --bin vggt-bench >&2
BENCH=target/debug/vggt-bench

if [ "$CONFIG" = tiny_a ]; then
  RUST_ARGS=(--config fixtures/tiny_a/config.json --weights fixtures/tiny_a/weights.safetensors
             --height 56 --width 84 --frames 3)
  PY_ARGS=(--config tiny_a --fixture fixtures/tiny_a)
else
  RUST_ARGS=(--config vggt1b --height 392 --width 518 --frames "$FRAMES")
  PY_ARGS=(--config vggt1b --S "$FRAMES" --H 392 --W 518)
fi

for round in $(seq "$ROUNDS"); do
  echo "# round $round: burn" >&2
  RAYON_NUM_THREADS="$THREADS" "$BENCH" phases "${RUST_ARGS[@]}" --runs "$RUNS" | tail -n 1
  echo "# round $round: pytorch" >&2
  "$PYTORCH_PYTHON" "$PYTORCH_BENCH" "${PY_ARGS[@]}" --threads "$THREADS" --runs "$RUNS"
done
