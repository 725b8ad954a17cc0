#!/usr/bin/env bash
# Set everything up on a fresh Debian/Ubuntu machine and run searchfs on the bundled example photos:
# install (apt + pip), draw the example library, index it, search it, mount it, look inside, unmount.
#
#   bash examples/demo.sh            state in ./.demo (delete it to start over)
#   SKIP_INSTALL=1 bash examples/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DEMO=$REPO/.demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  say "installing system packages (fuse3, libfuse2, exiftool) and searchfs"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse2 libimage-exiftool-perl >/dev/null
  python3 -m pip install -q -e "$REPO[test]"
fi

export SEARCHFS_HOME=$DEMO/home
mkdir -p "$DEMO"
python3 examples/make_photos.py examples/photos

say "searchfs doctor"
if ! python3 -m searchfs doctor; then
  if ! python3 -m searchfs doctor --fetch >/dev/null 2>&1; then
    say "the CLIP weights cannot be downloaded here: using a tiny model with RANDOM weights for this demo"
    echo "(every step runs, but rankings are meaningless; with network, 'searchfs doctor --fetch' gets the real model)"
    python3 examples/demo_model.py "$DEMO/model"
    export SEARCHFS_MODEL_NAME=searchfs-demo-tiny
    export SEARCHFS_MODEL_CONFIG_FILE=$DEMO/model/searchfs-demo-tiny.json
    export SEARCHFS_MODEL_PRETRAINED=$DEMO/model/searchfs-demo-tiny.pt
  fi
fi

say "searchfs index examples/photos"
python3 -m searchfs index examples/photos --no-progress

say 'searchfs search "red flower" -n 3'
python3 -m searchfs search "red flower" -n 3
say 'searchfs search "snowy mountain" --where camera=Canon'
python3 -m searchfs search "snowy mountain" --where camera=Canon
say "searchfs search --where year=2020..2021 --where has_gps=yes"
python3 -m searchfs search --where year=2020..2021 --where has_gps=yes

MNT=$DEMO/mnt
mkdir -p "$MNT"
say "searchfs mount examples/photos $MNT"
python3 -m searchfs mount examples/photos "$MNT"
trap 'python3 -m searchfs umount --lazy "$MNT" >/dev/null 2>&1 || true' EXIT
say "ls $MNT"; ls "$MNT"
say "ls '$MNT/query/red flower/'"; ls "$MNT/query/red flower/"
say "cat '$MNT/query/red flower/.results.tsv'"; cat "$MNT/query/red flower/.results.tsv"
say "ls $MNT/exif/camera/"; ls "$MNT/exif/camera/"
say "ls -l '$MNT/exif/camera=Canon/year=2019..2021/'"; ls -l "$MNT/exif/camera=Canon/year=2019..2021/"
say "ls $MNT/similar/photos/garden/red_flower.jpg/"; ls "$MNT/similar/photos/garden/red_flower.jpg/"

say "searchfs status"
python3 -m searchfs status
say "searchfs umount $MNT"
python3 -m searchfs umount "$MNT"
trap - EXIT
echo "done: the index is in $SEARCHFS_HOME; mount it again with: SEARCHFS_HOME=$SEARCHFS_HOME searchfs mount $MNT"
