"""Relaxation throughput: autoperi's batched FIRE against a per-structure ASE loop.

    nice -n 10 python bench/relax.py                 # ~5-10 minutes on 2 busy cores
    python bench/relax.py --num 16 --no-stock        # quick look

One thread everywhere (torch.set_num_threads(1), OMP_NUM_THREADS=1). The same structures
(MP-20 test split, first `--num` rows, each rattled by 0.05 Å and strained by up to ±3 %,
seed 0), the same potential (CHGNet 0.3.0 from its wheel), the same fmax and step limit:

* batched: `autoperi.eval.energy.relax` — all structures in flight share one batched
  forward/backward per step; FIRE on FrechetCellFilter variables, vectorized;
* ase:     for each structure, `ase.optimize.FIRE(FrechetCellFilter(atoms))` with
  `PotentialCalculator` around the same potential object (identical energy/force code,
  one structure per call): the difference is batching alone;
* stock:   the same loop with CHGNet's own ASE calculator (`CHGNetCalculator`, what most
  users run), which also builds a graph for second derivatives on every call.

Throughput is structures/s in wall time and in CPU time of this process (the CPU figure
is the one to trust on a shared machine: other processes steal wall time, not CPU time).
Agreement: per-structure differences of the final energies (eV/atom) and step counts.
A forward-only measurement (one evaluation of every structure, batched vs one at a time)
shows how much batching can gain at most with this model on this CPU.
Prints the figures; writes bench/results/relax.json.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata as metadata  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.filters import FrechetCellFilter  # noqa: E402
from ase.optimize import FIRE  # noqa: E402
from pymatgen.core import Structure  # noqa: E402
from pymatgen.io.ase import AseAtomsAdaptor  # noqa: E402

from autoperi.atomic import atomic_path  # noqa: E402
from autoperi.data.datasets import load_dataset  # noqa: E402
from autoperi.eval.energy import CHGNetPotential, PotentialCalculator, relax  # noqa: E402

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent


def structures(num: int, seed: int = 0) -> list[Structure]:
    """First `num` MP-20 test structures, rattled (0.05 Å) and strained (±3 %)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in load_dataset("mp-20", progress=False).structures("test")[:num]:
        s = s.copy()
        s.apply_strain(rng.uniform(-0.03, 0.03, 3))
        noise = rng.normal(0.0, 0.05, (len(s), 3))
        out.append(Structure(s.lattice, s.species, s.cart_coords + noise,
                             coords_are_cartesian=True, to_unit_cell=True))
    return out


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def ase_loop(batch, calc, fmax, steps):
    energies, nsteps, converged = [], [], []
    for s in batch:
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = calc
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        try:
            ok = opt.run(fmax=fmax, steps=steps)
            energies.append(atoms.get_potential_energy() / len(atoms))
        except Exception:  # noqa: BLE001 - counted as a failure, as the batched run would
            ok = False
            energies.append(float("nan"))
        nsteps.append(opt.nsteps)
        converged.append(bool(ok))
    return np.array(energies), np.array(nsteps), np.array(converged)


def arm_summary(name, clock, n, energies, nsteps, converged):
    evaluations = int(np.sum(nsteps + 1))
    row = {
        "name": name, "wall_s": round(clock.wall, 2), "cpu_s": round(clock.cpu, 2),
        "structures_per_s_wall": round(n / clock.wall, 4),
        "structures_per_s_cpu": round(n / clock.cpu, 4),
        "evaluations": evaluations, "converged": int(np.sum(converged)),
        "mean_steps": round(float(np.mean(nsteps)), 2),
    }
    print(f"{name:8s} wall {clock.wall:7.1f} s  cpu {clock.cpu:7.1f} s  "
          f"{row['structures_per_s_wall']:.3f} struct/s wall  "
          f"{row['structures_per_s_cpu']:.3f} struct/s cpu  "
          f"{evaluations} evaluations, {row['converged']}/{n} converged", flush=True)
    return row


def agreement(a_energy, a_steps, b_energy, b_steps):
    diff = np.abs(a_energy - b_energy)
    finite = np.isfinite(diff)
    return {
        "max_abs_energy_diff_ev_per_atom": float(diff[finite].max()) if finite.any() else None,
        "median_abs_energy_diff_ev_per_atom": float(np.median(diff[finite]))
        if finite.any() else None,
        "structures_compared": int(finite.sum()),
        "same_step_count": int(np.sum(a_steps == b_steps)),
        "max_step_count_diff": int(np.max(np.abs(a_steps - b_steps))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=50)
    parser.add_argument("--fmax", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--no-stock", action="store_true", help="skip CHGNetCalculator")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "relax.json")
    args = parser.parse_args()

    batch = structures(args.num)
    atoms_per = [len(s) for s in batch]
    print(f"{len(batch)} MP-20 test structures, {min(atoms_per)}-{max(atoms_per)} atoms "
          f"(mean {np.mean(atoms_per):.1f}); fmax {args.fmax} eV/Å, max {args.steps} steps; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    potential = CHGNetPotential()
    potential.predict(batch[:2])  # load the model and warm up

    # one energy+forces+stress evaluation of every structure: how much can batching gain?
    forward = {}
    chunk = potential.max_atoms_per_forward
    for label, size in (("one_by_one", 1), (f"chunks_of_{chunk}_atoms", chunk),
                        ("all_in_one_forward", 10**9)):
        potential.max_atoms_per_forward = size
        with Clock() as clock:
            potential.predict(batch)
        forward[label] = {"cpu_ms_per_structure": round(1000 * clock.cpu / len(batch), 2),
                          "wall_ms_per_structure": round(1000 * clock.wall / len(batch), 2)}
    potential.max_atoms_per_forward = chunk
    print("forward+backward, CPU ms per structure: " + ", ".join(
        f"{k} {v['cpu_ms_per_structure']}" for k, v in forward.items()), flush=True)

    arms = []
    with Clock() as clock:
        res = relax(batch, fmax=args.fmax, steps=args.steps, potential=potential,
                    batch_size=args.batch_size, progress=False)
    b_energy, b_steps = res.e_relaxed, res.steps
    arms.append(arm_summary("batched", clock, len(batch), b_energy, b_steps, res.converged))
    failures = [r for r in res.reasons if r]

    with Clock() as clock:
        a_energy, a_steps, a_conv = ase_loop(batch, PotentialCalculator(potential),
                                             args.fmax, args.steps)
    arms.append(arm_summary("ase", clock, len(batch), a_energy, a_steps, a_conv))
    agree = {"ase": agreement(b_energy, b_steps, a_energy, a_steps)}

    if not args.no_stock:
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()):
            stock_calc = CHGNetCalculator(model=potential.model, use_device="cpu")
        with Clock() as clock:
            s_energy, s_steps, s_conv = ase_loop(batch, stock_calc, args.fmax, args.steps)
        arms.append(arm_summary("stock", clock, len(batch), s_energy, s_steps, s_conv))
        agree["stock"] = agreement(b_energy, b_steps, s_energy, s_steps)

    base = arms[0]
    ratios = {a["name"]: {"wall": round(a["wall_s"] / base["wall_s"], 3),
                          "cpu": round(a["cpu_s"] / base["cpu_s"], 3)} for a in arms[1:]}
    for name, r in ratios.items():
        print(f"speed-up of batched over {name}: {r['cpu']:.2f}x (cpu), {r['wall']:.2f}x (wall);"
              f" energies agree within {agree[name]['max_abs_energy_diff_ev_per_atom']:.2e} "
              f"eV/atom (max), same step count for {agree[name]['same_step_count']}/"
              f"{len(batch)}", flush=True)
    if failures:
        print(f"{len(failures)} batched failures, e.g. {failures[0]}")

    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "nice -n 10 python bench/relax.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k not in ("out", "no_stock")) + (" --no-stock" if args.no_stock else ""),
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_end": round(os.getloadavg()[0], 2)},
        "versions": {p: metadata.version(p) for p in ("torch", "chgnet", "ase", "pymatgen")},
        "potential": potential.name,
        "structures": {"count": len(batch), "source": "mp-20 test split, first rows",
                       "perturbation": "strain U(-3%, 3%) per axis, rattle N(0, 0.05 Å)",
                       "atoms_min": min(atoms_per), "atoms_max": max(atoms_per),
                       "atoms_mean": round(float(np.mean(atoms_per)), 2)},
        "settings": {"fmax": args.fmax, "steps": args.steps, "batch_size": args.batch_size,
                     "max_atoms_per_forward": potential.max_atoms_per_forward},
        "forward_only": forward,
        "arms": arms,
        "speedup_of_batched": ratios,
        "agreement_with_batched": agree,
        "batched_failures": failures,
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
