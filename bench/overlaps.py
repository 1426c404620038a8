"""When do overlapping atoms form? CSP on the validation split with a trajectory: the share
of states with two atoms closer than 0.5 Å at each flow time, and for the crystals that end
that way, the closest-pair distance along the way.

    python bench/overlaps.py --model runs/perov5_sym/model --steps 50

Prints one JSON line per time; writes bench/results/overlaps_<tag>.json.
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
from autoperi.data.crystal import CrystalBatch  # noqa: E402
from autoperi.data.datasets import load_dataset  # noqa: E402
from autoperi.eval.validity import MIN_DISTANCE, minimum_distances  # noqa: E402
from autoperi.flow.sampler import Request, sample_flow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="perov-5")
    parser.add_argument("--tag", default="")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--num", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.model)
    dataset = load_dataset(config.data.dataset, seed=config.data.seed, progress=False,
                           symprec=config.data.symprec, max_atoms=config.data.max_atoms)
    batch = CrystalBatch.from_structures(dataset.structures("val")[: args.num])
    final, states = sample_flow(model, Request(batch.num_atoms, batch.atomic_numbers),
                                args.steps, "heun", 1.0,
                                torch.Generator().manual_seed(args.seed), trajectory=True)
    closest = np.stack([minimum_distances(s.to_structures()) for s in states])  # [T, B]
    bad = closest[-1] < MIN_DISTANCE
    rows = []
    for k, d in enumerate(closest):
        row = {"t": (k + 1) / args.steps, "share_overlapping": float((d < MIN_DISTANCE).mean()),
               "median_closest_of_final_overlaps": float(np.median(d[bad])) if bad.any() else None}
        rows.append(row)
        print(json.dumps(row))
    out = Path(args.out) / f"overlaps_{args.tag or Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "steps": args.steps, "crystals": len(bad),
                               "ending_overlapped": int(bad.sum()), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
