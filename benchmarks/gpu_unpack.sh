#!/usr/bin/env bash
# On the GPU machine: check and reassemble the parts written by gpu_pack.sh, and install the wheels
# into a private target directory (nothing touches the image's site-packages).
#
#   bash benchmarks/gpu_unpack.sh [PACK=gpu_pack] [TARGET=$PACK/site]
#   export PYTHONPATH=$TARGET:$PWD     # then run run_recbole.py / benchmarks as usual
set -euo pipefail
pack=${1:-gpu_pack}
target=${2:-$pack/site}
(cd "$pack" && sha256sum -c --quiet SHA256SUMS)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat "$pack"/part-* | tar -C "$tmp" -xf -
python3 -m pip install --quiet --no-deps --no-index --target "$target" "$tmp"/wheels/*.whl
echo "installed into $target: export PYTHONPATH=$target:\$PYTHONPATH"
