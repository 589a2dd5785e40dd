#!/usr/bin/env bash
# Downloads TUM RGB-D sequences and unpacks them into DEST.
#
#   datasets/download_tum.sh DEST [SEQUENCE ...]
#
# SEQUENCE is a name like freiburg1_xyz (the default), freiburg2_desk or freiburg3_long_office_household.
# Each ends up as DEST/rgbd_dataset_<SEQUENCE>/ (rgb.txt, depth.txt, groundtruth.txt, rgb/, depth/),
# ready for `vggtd run --input DEST/rgbd_dataset_<SEQUENCE>`. Set TUM_BASE_URL to use a mirror.
# A user script: nothing in the build or the tests runs it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/_common.sh"

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi
dest=$1
shift
sequences=("$@")
[ ${#sequences[@]} -gt 0 ] || sequences=(freiburg1_xyz)
base=${TUM_BASE_URL:-https://cvg.cit.tum.de/rgbd/dataset}
need tar
mkdir -p "$dest"

for seq in "${sequences[@]}"; do
    case $seq in
        freiburg[123]_*) ;;
        *) echo "error: '$seq' is not a TUM sequence name (e.g. freiburg1_xyz)" >&2; exit 2 ;;
    esac
    name=rgbd_dataset_$seq
    if [ -f "$dest/$name/rgb.txt" ]; then
        echo "$dest/$name already unpacked; skipping"
        continue
    fi
    archive=$dest/$name.tgz
    fetch "$base/${seq%%_*}/$name.tgz" "$archive"
    echo "unpacking $archive"
    tar -xzf "$archive" -C "$dest"
    rm -f "$archive"
    echo "ready: $dest/$name"
done
