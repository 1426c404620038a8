"""Does property targeting work? Hit rate of a target window for unconditioned vs
conditioned sampling at several guidance scales, judged by the generator's own head and by
an independent predictor (autoperi.eval.predictor), plus validity. --chgnet-judge adds a
second, structure-aware judge (bench/judge.py: gradient boosting on CHGNet crystal features,
fitted on the model's training split) and the share of crystals it calls gapped (> --gapped).

    python bench/guidance.py --model perov-5 --target dir_gap=1.35:1.65 --exclude Pb --num 300
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from autoperi.checkpoint import load_model  # noqa: E402
from autoperi.config import parse_targets  # noqa: E402
from autoperi.eval.predictor import SHIPPED, shipped_predictors  # noqa: E402
from autoperi.eval.validity import compositional_validity, structural_validity  # noqa: E402
from autoperi.generate import sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="perov-5")
    parser.add_argument("--target", default="dir_gap=1.35:1.65")
    parser.add_argument("--exclude", default="")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="name in the output file (default: model)")
    parser.add_argument("--chgnet-judge", action="store_true")
    parser.add_argument("--gapped", type=float, default=0.5)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.model)
    (name, (low, high)), = parse_targets([args.target]).items()
    predictor = shipped_predictors(config.data.dataset)[name]
    exclude = [e for e in args.exclude.split(",") if e]
    chgnet = None
    if args.chgnet_judge:
        from judge import ChgnetBoosted  # bench/judge.py

        from autoperi.data.datasets import training_dataset

        train = training_dataset(config.data, progress=False)
        chgnet = ChgnetBoosted(train.structures("train"), name)
    rows = []
    for label, targets, scale in [("unconditioned", None, 1.0)] + [
            (f"target, guidance {w:g}", {name: (low, high)}, w) for w in args.guidance]:
        structures = sample(model, args.num, targets, scale, exclude=exclude, steps=args.steps,
                            seed=args.seed, progress=False)
        own = np.array([s.properties[f"predicted_{name}"] for s in structures])
        independent = predictor.predict(structures)
        rows.append({
            "setting": label,
            "hit_rate_own_head": float(((own >= low) & (own <= high)).mean()),
            "hit_rate_independent": float(((independent >= low) & (independent <= high)).mean()),
            "mean_independent": float(independent.mean()),
            "structural_validity": float(structural_validity(structures).mean()),
            "compositional_validity": float(compositional_validity(structures).mean()),
        })
        if chgnet is not None:
            judged = chgnet.predict(structures)
            rows[-1].update({
                "hit_rate_chgnet_judge": float(((judged >= low) & (judged <= high)).mean()),
                "gapped_share_chgnet_judge": float((judged > args.gapped).mean()),
                "gapped_share_own_head": float((own > args.gapped).mean()),
                "mean_chgnet_judge": float(judged.mean())})
        print(json.dumps(rows[-1]), flush=True)
    result = {"model": args.model, "target": args.target, "exclude": exclude, "num": args.num,
              "steps": args.steps, "seed": args.seed,
              "predictor": str(SHIPPED / config.data.dataset / name),
              "predictor_metrics": predictor.metrics, "rows": rows}
    suffix = "_chgnet_judge" if chgnet is not None else ""
    tag = args.tag or Path(args.model).name
    out = Path(args.out) / f"guidance_{tag}_{name}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
