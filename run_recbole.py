"""Train and test CLLM4Rec or any RecBole model; ``--model=CLLM4Rec,BPR,MultiVAE`` compares several.

    python run_recbole.py --model=CLLM4Rec --dataset=ml-100k
    python run_recbole.py --model=BPR,MultiVAE,LightGCN --dataset=ml-100k --epochs=2
    python run_recbole.py -m CLLM4Rec -d ml-100k --llm tiny-random --pretrain_epochs=1 --epochs=1
    python run_recbole.py --model=CLLM4Rec --dataset=ml-100k --nproc=2        # data-parallel
"""
import sys

import recbole_cllm4rec  # noqa: F401  (shims + registration)
from recbole_cllm4rec.cli import parse_args
from recbole_cllm4rec.quick_start import run

if __name__ == "__main__":
    args, overrides = parse_args(sys.argv[1:])
    run(
        models=[m.strip() for m in args.model.split(",") if m.strip()],
        dataset=args.dataset,
        config_file_list=args.config_files.strip().split(" ") if args.config_files else None,
        config_dict=overrides,
        results_dir=args.results_dir,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )
