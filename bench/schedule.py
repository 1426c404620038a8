"""Sampling schedules and models on the validation split: match rate, RMSE and P1 share of
CSP, validity and P1 share of de novo crystals, per (model, steps @ jump time).

    python bench/schedule.py --models perov-5 --settings 20@1.0 5@1.0 10@0.7 10@0.5
    python bench/schedule.py --models runs/a/model runs/b/model --settings 50@1.0

"steps@T": the steps integrate the flow to t = T, then one step jumps to the model's clean
prediction (T = 1: no jump). Chosen on val so that the test split stays for the final
numbers (bench/sample.py). Prints one JSON line per row; writes bench/results/schedule.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from quality import csp_quality, denovo_quality  # noqa: E402 - bench/quality.py

from autoperi.checkpoint import load_model  # noqa: E402
from autoperi.cli import add_clash_options  # noqa: E402
from autoperi.data.datasets import training_dataset  # noqa: E402
from autoperi.generate import clash_of, predict_structures, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["perov-5"])
    parser.add_argument("--settings", nargs="+", default=["20@1.0"])
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-csp", type=int, default=480)
    parser.add_argument("--num-denovo", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--symprec", type=float, default=0.1, help="spglib tolerance of P1")
    add_clash_options(parser)
    parser.add_argument("--out", default="bench/results/schedule.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        model, config = load_model(name)
        dataset = training_dataset(config.data)
        inputs = dataset.structures(args.split)[: args.num_csp]
        clash = clash_of(model, args.clash_distance, args.clash_scale, args.clash_after)
        for setting in args.settings:
            steps, _, jump = setting.partition("@")
            steps, jump = int(steps), float(jump or 1.0)
            predicted = predict_structures(inputs, model, 1, steps, seed=args.seed,
                                           progress=False, jump_at=jump, clash=clash)
            row = {"model": name, "steps": steps, "jump_at": jump,
                   "clash_distance": clash.distance, "clash_scale": clash.scale,
                   **csp_quality(predicted, inputs, args.symprec)}
            if config.flow.generate_types and args.num_denovo:
                made = sample(model, args.num_denovo, steps=steps, seed=args.seed,
                              progress=False, jump_at=jump, clash=clash)
                row.update(denovo_quality(made, symprec=args.symprec))
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": args.split, "seed": args.seed, "symprec": args.symprec,
                               "clash_after": args.clash_after, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
