"""Shortest interatomic contacts of a dataset's training crystals: the basis of a model's
clash floors. Two figures per crystal: its shortest contact in Å (`model.clash_distance`
~ 0.9 x the 0.1st percentile) and its shortest contact relative to the two atoms' covalent
radii, d_ij / (r_i + r_j) (`model.clash_scale` ~ 0.9 x the 0.1st percentile), which also
holds for datasets whose short contacts are element-specific (MP-20: H-H 0.75 Å, O-H
0.97 Å).
Prints, writes JSON.

    python bench/contacts.py --dataset perov-5
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from type_schedule import min_distance_percentiles  # noqa: E402 - bench/type_schedule.py

from autoperi.data.datasets import load_dataset  # noqa: E402
from autoperi.eval.validity import shortest_relative_contacts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="perov-5")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    structures = load_dataset(args.dataset).structures(args.split)
    q = (0, 0.1, 1, 5, 50)
    relative = shortest_relative_contacts(structures)
    row = {"dataset": args.dataset, "split": args.split, "crystals": len(structures),
           "percentiles": list(q),
           "shortest_contact_angstrom": min_distance_percentiles(structures, q),
           "shortest_contact_over_covalent_sum": [
               round(float(v), 3) for v in np.nanpercentile(relative, q)]}
    print(json.dumps(row))
    out = Path(args.out) / f"contacts_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
