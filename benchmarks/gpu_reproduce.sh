#!/usr/bin/env bash
# The one prepared command for a lent GPU machine: unpack what gpu_pack.sh carried (if PACK exists),
# run benchmarks/reproduce.py (default recipe there: gpu, the paper's schedule) and leave every
# result under OUT: the table, CSV, plot and log, and a copy of the per-run JSON and checkpoints
# (kept in the ignored WORK=results/reproduce, which stays on a warm machine between calls, so a
# second call resumes where a call cut off by its time limit stopped). Extra arguments go to reproduce.py.
#
#   bash benchmarks/gpu_reproduce.sh PACK DATA_PATH OUT --dataset=amazon-beauty-paper --models=CLLM4Rec,EASE
set -euo pipefail
pack=$1 data=$2 out=$3
shift 3
if [ -d "$pack" ]; then
  bash "$(dirname "$0")/gpu_unpack.sh" "$pack" "$pack/site"
  export PYTHONPATH="$PWD/$pack/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
work=${WORK:-results/reproduce}
mkdir -p "$out" "$work"
trap 'cp -r "$work" "$out/work"' EXIT
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv) > "$out/device.txt" || true
"${PYTHON:-python3}" "$(dirname "$0")/reproduce.py" --data_path="$data" --work="$work" --out="$out" "$@" \
  2>&1 | tee "$out/reproduce.log"
