#!/usr/bin/env bash
# Downloads Microsoft 7-Scenes scenes and unpacks them (and their seq-XX.zip) into DEST.
#
#   datasets/download_7scenes.sh DEST [SCENE ...]
#
# SCENE is one of chess (the default), fire, heads, office, pumpkin, redkitchen, stairs. Each
# sequence ends up as DEST/<SCENE>/seq-XX/ (frame-XXXXXX.color.png, .depth.png, .pose.txt), ready
# for `vggtd run --input DEST/<SCENE>/seq-01`. Set SEVEN_SCENES_BASE_URL to use a mirror.
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
scenes=("$@")
[ ${#scenes[@]} -gt 0 ] || scenes=(chess)
base=${SEVEN_SCENES_BASE_URL:-http://download.microsoft.com/download/2/8/5/28564B23-0828-408F-8631-23B1EFF1DAC8}
need unzip
mkdir -p "$dest"

for scene in "${scenes[@]}"; do
    case $scene in
        chess|fire|heads|office|pumpkin|redkitchen|stairs) ;;
        *) echo "error: unknown 7-Scenes scene '$scene'" >&2; exit 2 ;;
    esac
    if [ -d "$dest/$scene/seq-01" ]; then
        echo "$dest/$scene already unpacked; skipping"
        continue
    fi
    archive=$dest/$scene.zip
    fetch "$base/$scene.zip" "$archive"
    echo "unpacking $archive"
    unzip -q -o "$archive" -d "$dest"
    rm -f "$archive"
    for inner in "$dest/$scene"/seq-*.zip; do
        [ -e "$inner" ] || continue
        echo "unpacking $inner"
        unzip -q -o "$inner" -d "$dest/$scene"
        rm -f "$inner"
    done
    echo "ready: $dest/$scene"
done
