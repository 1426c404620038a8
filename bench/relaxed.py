"""What a relaxation with a pretrained potential (CHGNet) adds to generated crystals: CSP on
the model's test split and de novo samples, scored as generated and after
`generate.relax_generated` (positions and cell, FIRE, fmax 0.1 eV/Å, at most 300 steps).
The relaxed figures are not comparable with published raw CSP numbers (DiffCSP, FlowMM
score unrelaxed samples). Prints, writes JSON.

    python bench/relaxed.py --model mp-20 --num-csp 300 --num-denovo 300 --control 100
    python bench/relaxed.py --model carbon-24 --num-csp 202 --pressure 10 --control 50
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from quality import (  # noqa: E402 - bench/quality.py
    add_set_options,
    csp_quality,
    denovo_quality,
    generated_sets,
)

from autoperi.checkpoint import load_model  # noqa: E402
from autoperi.generate import relax_generated  # noqa: E402


def relaxed_figures(made, fmax, steps, pressure) -> tuple[list, dict]:
    start = time.perf_counter()
    out = relax_generated(made, fmax=fmax, steps=steps, progress=False, pressure=pressure)
    e0 = np.array([s.properties.get("energy_per_atom_generated", np.nan) for s in out])
    e1 = np.array([s.properties.get("energy_per_atom", np.nan) for s in out])
    return out, {"relax_seconds": time.perf_counter() - start,
                 "relax_converged_share": float(np.mean(
                     [s.properties.get("relax_converged", 0) for s in out])),
                 "relax_problems": sum("relax_problem" in s.properties for s in out),
                 "median_relaxation_energy_ev_per_atom": float(np.nanmedian(e0 - e1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_options(parser)
    parser.add_argument("--fmax", type=float, default=0.1)
    parser.add_argument("--relax-steps", type=int, default=300)
    parser.add_argument("--pressure", type=float, default=0.0, help="GPa (Carbon-24: 10)")
    parser.add_argument("--control", type=int, default=0,
                        help="also relax this many true structures and match them to "
                             "themselves")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.model)
    row = {"model": args.model, "split": args.split, "steps": args.steps, "seed": args.seed,
           "fmax": args.fmax, "relax_steps": args.relax_steps, "pressure_gpa": args.pressure}
    truth, csp, denovo = generated_sets(model, config, args)
    if truth:
        relaxed, figures = relaxed_figures(csp, args.fmax, args.relax_steps, args.pressure)
        row["csp"] = {"num": len(truth), "generated": csp_quality(csp, truth),
                      "relaxed": csp_quality(relaxed, truth), **figures}
        if args.control:  # the data's own structures relaxed: how far the potential's
            # minima lie from the data's (DFT) ones, whatever the model does
            ref = truth[: args.control]
            moved, control = relaxed_figures(ref, args.fmax, args.relax_steps, args.pressure)
            row["csp"]["control_relaxed_truth"] = {"num": len(ref),
                                                   **csp_quality(moved, ref), **control}
        print(json.dumps(row["csp"]), flush=True)
    if denovo:
        relaxed, figures = relaxed_figures(denovo, args.fmax, args.relax_steps, args.pressure)
        row["denovo"] = {"num": args.num_denovo, "generated": denovo_quality(denovo),
                         "relaxed": denovo_quality(relaxed), **figures}
        print(json.dumps(row["denovo"]), flush=True)
    out = Path(args.out or f"bench/results/relaxed_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
