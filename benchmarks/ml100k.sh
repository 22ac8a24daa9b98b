#!/usr/bin/env bash
# CLLM4Rec (defaults: SmolLM2-135M, properties/CLLM4Rec.yaml) against RecBole baselines on ml-100k,
# identical per-user random 80/10/10 split, full ranking. Writes the table to docs/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
python run_recbole.py --model=CLLM4Rec,Pop,BPR,MultiVAE,EASE --dataset=ml-100k --show_progress=False \
  --results_dir=docs/results "$@"
