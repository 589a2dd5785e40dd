#!/usr/bin/env bash
# Downloads EuRoC MAV sequences (ASL .zip format) and unpacks them into DEST.
#
#   datasets/download_euroc.sh DEST [SEQUENCE ...]
#
# SEQUENCE is MH_01_easy (the default) ... MH_05_difficult, V1_01_easy ... V2_03_difficult. Each
# ends up as DEST/<SEQUENCE>/mav0/ (cam0/data.csv, cam0/data/*.png, cam0/sensor.yaml, ground truth),
# ready for `vggtd run --input DEST/<SEQUENCE>`. The ETH server has moved before: if the default
# host fails, set EUROC_BASE_URL to the folder holding machine_hall/ and vicon_room1|2/.
# A user script: nothing in the build or the tests runs it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/_common.sh"

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi
dest=$1
shift
sequences=("$@")
[ ${#sequences[@]} -gt 0 ] || sequences=(MH_01_easy)
base=${EUROC_BASE_URL:-http://robotics.ethz.ch/~asl-datasets/ijrr_euroc_mav_dataset}
need unzip
mkdir -p "$dest"

for seq in "${sequences[@]}"; do
    case $seq in
        MH_0[1-5]_*) group=machine_hall ;;
        V1_0[1-3]_*) group=vicon_room1 ;;
        V2_0[1-3]_*) group=vicon_room2 ;;
        *) echo "error: '$seq' is not a EuRoC sequence name (e.g. MH_01_easy)" >&2; exit 2 ;;
    esac
    if [ -f "$dest/$seq/mav0/cam0/data.csv" ]; then
        echo "$dest/$seq already unpacked; skipping"
        continue
    fi
    archive=$dest/$seq.zip
    fetch "$base/$group/$seq/$seq.zip" "$archive"
    echo "unpacking $archive into $dest/$seq"
    mkdir -p "$dest/$seq"
    unzip -q -o "$archive" -d "$dest/$seq"
    rm -f "$archive"
    echo "ready: $dest/$seq"
done
