"""Train and test CLLM4Rec or any RecBole model; ``--model=CLLM4Rec,BPR,MultiVAE`` compares several.

    python run_recbole.py --model=CLLM4Rec --dataset=ml-100k
    python run_recbole.py --model=BPR,MultiVAE,LightGCN --dataset=ml-100k --epochs=2
    python run_recbole.py -m CLLM4Rec -d ml-100k --llm tiny-random --pretrain_epochs=1 --epochs=1
    python run_recbole.py --model=CLLM4Rec --dataset=ml-100k --nproc=2        # data-parallel

Installed from a wheel, ``python -m recbole_cllm4rec`` takes the same flags.
"""
import recbole_cllm4rec  # noqa: F401  (shims + PaperRecall)
from recbole_cllm4rec.cli import command_line, main

if __name__ == "__main__":
    command_line(main)
