"""Does a clash floor make better crystals, or only hide crowding? The same sampling run
(same seed) with the floor off and on, paired crystal by crystal where the compositions
agree, judged by a pretrained potential (CHGNet, static energy per atom). Prints, writes
JSON.

    python bench/clash_energy.py --model mp-20 --scale 0.63 --num 500
    python bench/clash_energy.py --model mp-20 --scale 0.63 --task csp --num 500
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
from autoperi.data.datasets import training_dataset  # noqa: E402
from autoperi.eval.energy import energies  # noqa: E402
from autoperi.eval.validity import shortest_relative_contacts, structural_validity  # noqa: E402
from autoperi.generate import clash_of, predict_structures, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mp-20")
    parser.add_argument("--task", choices=("dng", "csp"), default="dng")
    parser.add_argument("--distance", type=float, default=0.0, help="clash distance (Å) on")
    parser.add_argument("--scale", type=float, default=0.0, help="clash scale on")
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.model)
    arms = {"off": clash_of(model, 0.0, 0.0), "on": clash_of(model, args.distance, args.scale)}
    made = {}
    for name, clash in arms.items():
        if args.task == "csp":
            inputs = training_dataset(config.data).structures("val")[: args.num]
            made[name] = predict_structures(inputs, model, 1, args.steps, seed=args.seed,
                                            progress=False, clash=clash)
        else:
            made[name] = sample(model, args.num, steps=args.steps, seed=args.seed,
                                progress=False, clash=clash)
    same = [k for k, (a, b) in enumerate(zip(made["off"], made["on"]))
            if a.composition == b.composition]
    e = {name: np.asarray(energies([made[name][k] for k in same], progress=False))
         for name in arms}
    both = np.isfinite(e["off"]) & np.isfinite(e["on"])
    diff = e["on"][both] - e["off"][both]
    row = {"model": args.model, "task": args.task, "num": args.num, "steps": args.steps,
           "seed": args.seed, "clash_on": vars(arms["on"]),
           "same_composition": len(same), "both_scored": int(both.sum()),
           "scored_off": int(np.isfinite(e["off"]).sum()),
           "scored_on": int(np.isfinite(e["on"]).sum()),
           "median_energy_off": float(np.median(e["off"][both])),
           "median_energy_on": float(np.median(e["on"][both])),
           "median_paired_change_ev_per_atom": float(np.median(diff)),
           "mean_paired_change_ev_per_atom": float(np.mean(diff)),
           "share_lower_with_floor": float(np.mean(diff < -1e-4)),
           "share_unchanged": float(np.mean(np.abs(diff) <= 1e-4)),
           "share_higher_with_floor": float(np.mean(diff > 1e-4)),
           **{f"structural_validity_{name}": float(structural_validity(made[name]).mean())
              for name in arms},
           **{f"relative_contact_p1_{name}": float(np.nanpercentile(
               shortest_relative_contacts(made[name]), 1)) for name in arms}}
    print(json.dumps(row))
    out = Path(args.out or f"bench/results/clash_energy_{args.model}_{args.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
