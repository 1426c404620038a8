"""When do overlapping atoms form? CSP on the validation split (or de novo, --denovo N) with a
trajectory: the share of states with two atoms closer than 0.5 Å at each flow time, and for
the crystals that end that way, the closest-pair distance along the way.

    python bench/overlaps.py --model runs/perov5_sym/model --steps 50
    python bench/overlaps.py --model perov-5 --denovo 2000 --tag perov-5_denovo

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
from autoperi.data.datasets import training_dataset  # noqa: E402
from autoperi.eval.validity import MIN_DISTANCE, minimum_distances  # noqa: E402
from autoperi.flow.sampler import Request, sample_flow  # noqa: E402


def pair_rank_at_start(first, last) -> int:
    """Rank (0 = closest) at the first state of the pair of atoms closest in the last state,
    among all atom pairs (minimum-image distances)."""
    end = last.distance_matrix + np.diag(np.full(len(last), np.inf))
    i, j = np.unravel_index(np.argmin(end), end.shape)
    start = first.distance_matrix
    upper = start[np.triu_indices(len(first), 1)]
    return int((upper < start[i, j]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="perov-5")
    parser.add_argument("--tag", default="")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--num", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--denovo", type=int, default=0,
                        help="sample this many de novo crystals instead of CSP on val")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    if args.denovo:
        requests = [Request(model.stats.atom_count_prior.sample(min(256, args.denovo - lo),
                                                                generator))
                    for lo in range(0, args.denovo, 256)]
    else:
        dataset = training_dataset(config.data, progress=False)
        batch = CrystalBatch.from_structures(dataset.structures("val")[: args.num])
        requests = [Request(batch.num_atoms, batch.atomic_numbers)]
    parts, ranks = [], []
    for request in requests:
        _, states = sample_flow(model, request, args.steps, "heun", 1.0, generator,
                                trajectory=True)
        frames = [s.to_structures() for s in states]
        parts.append(np.stack([minimum_distances(f) for f in frames]))
        ranks += [pair_rank_at_start(first, last) for first, last, end in
                  zip(frames[0], frames[-1], parts[-1][-1]) if end < MIN_DISTANCE]
    closest = np.concatenate(parts, axis=1)  # [T, B]
    bad = closest[-1] < MIN_DISTANCE
    rows = []
    for k, d in enumerate(closest):
        row = {"t": (k + 1) / args.steps, "share_overlapping": float((d < MIN_DISTANCE).mean()),
               "median_closest_of_final_overlaps": float(np.median(d[bad])) if bad.any() else None}
        rows.append(row)
        print(json.dumps(row))
    out = Path(args.out) / f"overlaps_{args.tag or Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # when each crystal that ends overlapped last came closer than 0.5 Å for good
    below = closest[:, bad] < MIN_DISTANCE
    since = [(len(b) - int(np.argmin(b[::-1])) + 1) / args.steps if not b.all() else 1 / args.steps
             for b in below.T]
    out.write_text(json.dumps({"model": args.model, "steps": args.steps,
                               "mode": "denovo" if args.denovo else "csp_val",
                               "crystals": len(bad), "ending_overlapped": int(bad.sum()),
                               "overlapped_since_t": since,
                               # 0: the pair that ends overlapped was the closest pair after
                               # the first step; of C(n, 2) pairs (10 for 5 atoms)
                               "collapsing_pair_rank_at_first_step": ranks,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
