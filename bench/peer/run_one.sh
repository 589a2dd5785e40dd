#!/usr/bin/env bash
# run_one.sh DATASET LEVEL: vggtd and the VGGT-SLAM 2.0 back-end on the same recorded predictions.
# LEVEL: toy | vggt | hard (presets) | row2 | row3 (white-noise rows, row2.toml / row3.toml).
# Environment: PEER (scratch folder with VGGT-SLAM/, venv/, data/; default /tmp/peer),
# VGGTD (the vggtd binary; default target/release/vggtd), EVO_APE (default $PEER/venv/bin/evo_ape).
set -u
here=$(cd "$(dirname "$0")" && pwd)
P=${PEER:-/tmp/peer}; BIN=${VGGTD:-$here/../../target/release/vggtd}; EVO=${EVO_APE:-$P/venv/bin/evo_ape}
D=$1; L=$2; DATA=$P/data/$D; R=$P/runs/$D/$L; mkdir -p "$R"
case $L in
  toy|vggt|hard) SIM=(--sim-preset "$L");;
  row2|row3) SIM=(--config "$here/$L.toml");;
  *) echo "unknown level $L" >&2; exit 2;;
esac
rm -rf "$R/rec" "$R/out"
"$BIN" run --input "$DATA" --predictor simulated "${SIM[@]}" --record "$R/rec" --output "$R/out" \
    > "$R/vggtd.stdout" 2> "$R/vggtd.log"
"$BIN" eval --gt "$DATA/groundtruth.txt" --est "$R/out/trajectory.txt" --align sim3 --json > "$R/vggtd_eval.json" 2>&1
"$EVO" tum "$DATA/groundtruth.txt" "$R/out/trajectory.txt" -as > "$R/vggtd_evo.txt" 2>&1
for o in drop-first drop-last; do
  for lp in none vggtd; do
    arg=none; [ "$lp" = vggtd ] && arg=$R/vggtd.log
    "$P/venv/bin/python" "$here/run_peer.py" "$R/rec" "$R/peer_${o}_$lp.txt" --quiet --overlap "$o" \
        --loops "$arg" > "$R/peer_${o}_$lp.json" 2> "$R/peer_${o}_$lp.err"
    "$EVO" tum "$DATA/groundtruth.txt" "$R/peer_${o}_$lp.txt" -as > "$R/peer_${o}_${lp}_evo.txt" 2>&1
  done
done
