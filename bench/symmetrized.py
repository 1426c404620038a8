"""What snapping generated crystals to the symmetry spglib finds (`generate.symmetrize_generated`,
CLI `--symmetrize PREC`) does: CSP on the model's split and de novo samples, scored as
generated and after snapping at each tolerance, with the CHGNet energy change crystal by
crystal (`--energies`). Prints, writes JSON.

    python bench/symmetrized.py --model perov-5 --symprecs 0.05 0.1 0.2 0.5 --energies
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
from autoperi.eval.energy import energies  # noqa: E402
from autoperi.generate import symmetrize_generated  # noqa: E402


def snapped_figures(made, symprec: float, energy_before) -> tuple[list, dict]:
    start = time.perf_counter()
    out = symmetrize_generated(made, symprec)
    seconds = time.perf_counter() - start
    shifts = np.array([s.properties["symmetrize_max_shift"] for s in out
                       if "symmetrize_max_shift" in s.properties])
    moved = shifts[shifts > 1e-6]  # crystals that found symmetry to snap to
    figures = {"symprec": symprec, "ms_per_structure": 1000 * seconds / len(made),
               "problems": len(made) - len(shifts), "moved_share": len(moved) / len(made),
               "median_max_shift_of_moved": float(np.median(moved)) if len(moved) else None}
    if energy_before is not None:
        change = np.asarray(energies(out, progress=False)) - energy_before
        figures.update({"median_energy_change_ev_per_atom": float(np.nanmedian(change)),
                        "energy_higher_share": float(np.mean(change > 1e-3)),
                        "energy_lower_share": float(np.mean(change < -1e-3))})
    return out, figures


def scored(made, symprecs, score, with_energies: bool) -> dict:
    """{"generated": score(made), "<symprec>": {...score(snapped), figures}}."""
    before = np.asarray(energies(made, progress=False)) if with_energies else None
    row = {"num": len(made), "generated": score(made)}
    for symprec in symprecs:
        snapped, figures = snapped_figures(made, symprec, before)
        key = f"{symprec:g}"
        row[key] = {**score(snapped), **figures}
        print(json.dumps({key: row[key]}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_options(parser)
    parser.add_argument("--symprecs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--energies", action="store_true",
                        help="CHGNet energy per atom before and after, paired")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config = load_model(args.model)
    truth, csp, denovo = generated_sets(model, config, args)
    row = {"model": args.model, "split": args.split, "steps": args.steps, "seed": args.seed}
    if truth:
        row["csp"] = scored(csp, args.symprecs, lambda s: csp_quality(s, truth), args.energies)
        print(json.dumps({"csp generated": row["csp"]["generated"]}), flush=True)
    if denovo:
        row["denovo"] = scored(denovo, args.symprecs, denovo_quality, args.energies)
        print(json.dumps({"denovo generated": row["denovo"]["generated"]}), flush=True)
    out = Path(args.out or f"bench/results/symmetrized_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
