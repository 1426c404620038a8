"""Sampling benchmark: speed and quality per compute for a trained model.

For each step count: CSP on the model's held-out test split (k = 1, StructureMatcher
stol 0.5 / ltol 0.3 / angle 10) -> match rate, RMSE, structures/s; and de novo generation ->
structural and compositional validity, structures/s, share of P1 (spglib, symprec 0.1) of
both, validity free and with charge-neutral type
decoding committed at t = --commit-types. Prints a table, writes JSON.

    python bench/sample.py --model perov-5 --steps 5 10 20 50 --num-test 480 --num-denovo 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from quality import csp_quality, denovo_quality  # noqa: E402 - bench/quality.py

from autoperi.checkpoint import load_model  # noqa: E402
from autoperi.data.datasets import training_dataset  # noqa: E402
from autoperi.generate import predict_structures, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="perov-5")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--method", default="heun")
    parser.add_argument("--num-test", type=int, default=480)
    parser.add_argument("--num-denovo", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results",
                        help="JSON file, or folder for sample_<model>.json")
    parser.add_argument("--csp-jump-at", type=float, default=1.0)
    parser.add_argument("--denovo-jump-at", type=float, default=1.0)
    parser.add_argument("--split", default="test",
                        help="test (val: use bench/schedule.py to choose settings)")
    parser.add_argument("--commit-types", type=float, default=0.7,
                        help="flow time of the charge-neutral de novo arm (0.7)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, config = load_model(args.model)
    dataset = training_dataset(config.data)
    test = dataset.structures(args.split)[: args.num_test]
    rows = []
    for steps in args.steps:
        start = time.perf_counter()
        predicted = predict_structures(test, model, 1, steps, args.method, args.seed,
                                       progress=False, jump_at=args.csp_jump_at)
        csp_seconds = time.perf_counter() - start
        row = {"steps": steps, **csp_quality(predicted, test),
               "csp_structures_per_s": len(test) / csp_seconds}
        if config.flow.generate_types and args.num_denovo:
            start = time.perf_counter()
            generated = sample(model, args.num_denovo, steps=steps, method=args.method,
                               seed=args.seed, progress=False, jump_at=args.denovo_jump_at)
            row["denovo_structures_per_s"] = args.num_denovo / (time.perf_counter() - start)
            row.update(denovo_quality(generated))
            neutral = sample(model, args.num_denovo, steps=steps, method=args.method,
                             seed=args.seed, progress=False, commit_at=args.commit_types,
                             charge_neutral=True, jump_at=args.denovo_jump_at)
            row.update(denovo_quality(neutral, prefix="neutral_", p1=False))
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(r["csp_match_rate"] for r in rows)
    result = {
        "model": args.model, "method": args.method, "split": args.split,
        "csp_jump_at": args.csp_jump_at, "denovo_jump_at": args.denovo_jump_at,
        "commit_types": args.commit_types, "test_crystals": len(test),
        "denovo_crystals": args.num_denovo, "seed": args.seed, "rows": rows,
        "best_match_rate": best,
        "share_of_best_at_50_steps_or_fewer": max(
            (r["csp_match_rate"] for r in rows if r["steps"] <= 50), default=float("nan"))
        / best if best > 0 else float("nan"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, 1 thread",
    }
    print(_table(rows))
    out = Path(args.out)  # a .json file, or a folder for sample_<model>.json
    out = out if out.suffix == ".json" else out / f"sample_{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def _table(rows) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k])
                                       for k in keys) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
