"""When to decide the atom types in de novo sampling: validity per type schedule, with the
compositions that fail SMACT (why a crystal is compositionally invalid).

Arms: "free" (types flow to t = 1: read off by argmax on the gaussian type path, revealed
one by one on the masked one) and "T" (types committed at t = T
to the argmax of the model's predicted clean types, no composition check; geometry flows
on). Charge-neutral decoding is not an arm: it uses the metric as a constraint.

    python bench/type_schedule.py --model perov-5 --arms free 0.9 0.7 --num 2000 --steps 50
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from quality import denovo_quality  # noqa: E402 - bench/quality.py

from autoperi.checkpoint import load_model  # noqa: E402
from autoperi.cli import add_clash_options  # noqa: E402
from autoperi.eval.validity import (  # noqa: E402
    compositional_validity,
    shortest_relative_contacts,
    structural_validity,
)
from autoperi.generate import clash_of, sample  # noqa: E402


def invalid_formulas(structures, valid, top: int = 10) -> list[tuple[str, int]]:
    """Most frequent reduced formulas among the structures where `valid` is False."""
    counts = collections.Counter(s.composition.reduced_formula
                                 for s, ok in zip(structures, valid) if not ok)
    return counts.most_common(top)


def min_distance_percentiles(structures, q=(0, 0.1, 1)) -> list[float]:
    """Percentiles of each crystal's shortest interatomic distance (all images), Å."""
    shortest = []
    for s in structures:
        d = s.distance_matrix
        shortest.append(d[np.triu_indices(len(s), 1)].min() if len(s) > 1 else np.inf)
    return [round(float(v), 3) for v in np.percentile(shortest, q)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="perov-5")
    parser.add_argument("--arms", nargs="+", default=["free", "0.9", "0.7"])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    add_clash_options(parser)
    parser.add_argument("--out", default="bench/results/type_schedule.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(args.model)
    clash = clash_of(model, args.clash_distance, args.clash_scale, args.clash_after)
    rows = []
    for arm in args.arms:
        commit_at = None if arm == "free" else float(arm)
        start = time.perf_counter()
        made = sample(model, args.num, steps=args.steps, seed=args.seed, progress=False,
                      commit_at=commit_at, clash=clash)
        row = {"arm": arm, "seconds": time.perf_counter() - start, **denovo_quality(made),
               # SMACT failures, and crystals with atoms < 0.5 Å apart or cells < 0.1 Å^3
               "failing_formulas": invalid_formulas(
                   made, compositional_validity([s.composition for s in made])),
               "overlapping_formulas": invalid_formulas(made, structural_validity(made)),
               # unphysically close but "valid" pairs: the bundled Perov-5 rows are >= 1.3 Å
               "below_1A_share": float(1 - structural_validity(made, min_distance=1.0).mean()),
               "min_distance_percentiles_0_0.1_1": min_distance_percentiles(made),
               # the same relative to covalent radii (bench/contacts.py gives the data's)
               "relative_contact_percentiles_0_0.1_1": [round(float(v), 3) for v in
                   np.nanpercentile(shortest_relative_contacts(made), (0, 0.1, 1))]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"model": args.model, "steps": args.steps, "num": args.num, "seed": args.seed,
              "clash_distance": clash.distance, "clash_scale": clash.scale,
              "clash_after": clash.after,
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
