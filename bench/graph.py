"""Periodic radius graph on the CPU: autoperi's backends against vesin, pymatgen and matscipy.

    python bench/graph.py                # ~2-3 minutes on 2 cores
    python bench/graph.py --repeats 3    # quicker, noisier

One thread everywhere (torch.set_num_threads(1), OMP_NUM_THREADS=1). Every method gets the
same crystals and returns one batched, full (both directions) edge list:

* batch:   256 real structures (128 Perov-5 + 128 Carbon-24, the first rows of each val
           split), cutoffs 5 / 6 / 8 Å; ratios to the fastest method;
* size:    supercells of a real perovskite (5 to 1,080 atoms), cost per crystal, to set
           `VESIN_MIN_ATOMS` (the torch backend runs batches of copies, as in training);
* sheared: the same 256 crystals described by a skewed cell (U = [[1,0,0],[3,1,0],[0,0,1]]).

The libraries are called once per structure on Cartesian inputs computed beforehand, and
their per-structure outputs are concatenated with atom offsets (what a batched model
needs); autoperi takes the batch as tensors (fractional coordinates, lattices) and also
sorts its edges canonically. Times are medians over repeats, methods interleaved so that
background load hits all of them alike. Prints tables; writes bench/results/graph.json.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import gzip  # noqa: E402
import importlib.metadata as metadata  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import autoperi.geometry.graph as graph_module  # noqa: E402
from autoperi.data.io import parse_cif_block  # noqa: E402
from autoperi.geometry.graph import radius_graph  # noqa: E402
from autoperi.geometry.torus import wrap  # noqa: E402

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHEAR = np.array([[1, 0, 0], [3, 1, 0], [0, 0, 1]], dtype=float)


# ---------------------------------------------------------------------- data
def _csv(name: str) -> pd.DataFrame:
    """A bundled dataset file, else the shared copy next to the repository."""
    for folder in (ROOT / "src" / "autoperi" / "data" / "files", ROOT.parent / "shared" / "data"):
        path = folder / name
        if path.exists():
            return pd.read_csv(io.BytesIO(gzip.decompress(path.read_bytes())))
    raise FileNotFoundError(f"{name}: not bundled and no ../shared/data copy")


def load_crystals(per_dataset: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frac [n, 3], lattice [3, 3]) of the first rows of Perov-5 and Carbon-24 val."""
    crystals = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("perov_5/val.csv.gz", "carbon_24/val.csv.gz"):
            for cif in _csv(name)["cif"][:per_dataset]:
                s = parse_cif_block(cif)
                crystals.append((np.array(s.frac_coords), np.array(s.lattice.matrix)))
    return crystals


def sheared(crystals):
    """The same crystals in a skewed cell: lattice U @ L, coordinates wrap(frac @ inv(U))."""
    inv = np.linalg.inv(SHEAR)
    out = []
    for frac, lattice in crystals:
        frac_u = wrap(torch.from_numpy(frac @ inv)).numpy()
        out.append((frac_u, SHEAR @ lattice))
    return out


def supercell(frac: np.ndarray, lattice: np.ndarray, reps: tuple[int, int, int]):
    """The (r0, r1, r2) supercell: lattice rows scaled, atoms repeated."""
    shifts = np.array([[a, b, c] for a in range(reps[0]) for b in range(reps[1])
                       for c in range(reps[2])])
    frac_k = ((frac[None, :, :] + shifts[:, None, :]) / np.array(reps)).reshape(-1, 3)
    return frac_k, lattice * np.array(reps)[:, None]


# Supercells from ~5 to ~1,000 atoms, finer where the backends cross.
SUPERCELLS = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (3, 2, 1), (2, 2, 2), (3, 2, 2), (4, 2, 2),
              (3, 3, 3), (4, 4, 4), (5, 5, 5), (6, 6, 6)]


# ---------------------------------------------------------------------- methods
def autoperi_method(backend: str):
    def prepare(crystals):
        frac = torch.from_numpy(np.concatenate([f for f, _ in crystals]))
        lattice = torch.from_numpy(np.stack([lat for _, lat in crystals]))
        counts = torch.tensor([len(f) for f, _ in crystals])
        return frac, lattice, counts

    def run(inputs, cutoff):
        g = radius_graph(*inputs, cutoff, backend=backend)
        return g.num_edges

    return prepare, run


def _cartesian(crystals):
    return [(np.ascontiguousarray(f @ lat), np.ascontiguousarray(lat)) for f, lat in crystals]


def _concatenate(parts, counts):
    offsets = np.cumsum([0] + counts[:-1])
    i = np.concatenate([p[0] + o for p, o in zip(parts, offsets, strict=True)])
    j = np.concatenate([p[1] + o for p, o in zip(parts, offsets, strict=True)])
    shifts = np.concatenate([p[2] for p in parts])
    return i, j, shifts


def vesin_method():
    from vesin import NeighborList

    def run(inputs, cutoff):
        search = NeighborList(cutoff=cutoff, full_list=True)
        parts = [search.compute(points=x, box=lat, periodic=True, quantities="ijS")
                 for x, lat in inputs]
        i, _, _ = _concatenate(parts, [len(x) for x, _ in inputs])
        return len(i)

    return _cartesian, run


def pymatgen_method():
    from pymatgen.optimization.neighbors import find_points_in_spheres

    pbc = np.array([1, 1, 1], dtype=np.int64)

    def run(inputs, cutoff):
        parts = []
        for x, lat in inputs:
            center, neighbor, offsets, d = find_points_in_spheres(
                x, x, r=cutoff, pbc=pbc, lattice=lat, tol=1e-8
            )
            keep = d > 1e-8  # it lists every atom as its own neighbour
            parts.append((center[keep], neighbor[keep], offsets[keep]))
        i, _, _ = _concatenate(parts, [len(x) for x, _ in inputs])
        return len(i)

    return _cartesian, run


def matscipy_method():
    from matscipy.neighbours import neighbour_list

    pbc = np.array([True, True, True])

    def run(inputs, cutoff):
        parts = [neighbour_list("ijS", positions=x, cell=lat, pbc=pbc, cutoff=cutoff)
                 for x, lat in inputs]
        i, _, _ = _concatenate(parts, [len(x) for x, _ in inputs])
        return len(i)

    return _cartesian, run


METHODS = {
    "autoperi auto": autoperi_method("auto"),
    "autoperi torch": autoperi_method("torch"),
    "autoperi vesin": autoperi_method("vesin"),
    "vesin": vesin_method(),
    "pymatgen": pymatgen_method(),
    "matscipy": matscipy_method(),
}


def time_methods(methods: dict, crystals, cutoff: float, repeats: int) -> dict:
    """{name: (median seconds, edges)}; methods interleaved, one warm-up call each."""
    inputs = {name: prepare(crystals) for name, (prepare, _) in methods.items()}
    edges = {name: run(inputs[name], cutoff) for name, (_, run) in methods.items()}
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, (_, run) in methods.items():
            start = time.perf_counter()
            run(inputs[name], cutoff)
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), edges[name]) for name in methods}


# ---------------------------------------------------------------------- sections
def bench_batch(crystals, cutoffs, repeats):
    rows = []
    for cutoff in cutoffs:
        result = time_methods(METHODS, crystals, cutoff, repeats)
        fastest = min(t for t, _ in result.values())
        for name, (t, edges) in result.items():
            rows.append({"cutoff": cutoff, "method": name, "ms": 1e3 * t,
                         "ratio_to_fastest": t / fastest, "edges": edges})
    return rows


def bench_size(crystals, cutoff, repeats, batch_atoms=2000):
    """Cost per crystal vs size, for supercells of a Perov-5 and a Carbon-24 cell."""
    rows = []
    for base, (frac, lattice) in (("perov_5", crystals[0]), ("carbon_24", crystals[128])):
        for reps in SUPERCELLS:
            big = supercell(frac, lattice, reps)
            n = len(big[0])
            if n > 1100:
                continue
            copies = max(1, batch_atoms // n)
            per_batch = {name: METHODS[name] for name in ("autoperi torch", "autoperi vesin")}
            result = time_methods(per_batch, [big] * copies, cutoff, repeats)
            libraries = {name: METHODS[name] for name in ("vesin", "pymatgen", "matscipy")}
            result.update(time_methods(libraries, [big], cutoff, repeats))
            for name, (t, edges) in result.items():
                per = copies if name.startswith("autoperi") else 1
                rows.append({"base": base, "supercell": list(reps), "atoms": n, "method": name,
                             "ms_per_crystal": 1e3 * t / per, "batch_copies": per,
                             "edges_per_crystal": edges // per})
    return rows


def bench_shear(crystals, cutoff, repeats):
    plain = time_methods(METHODS, crystals, cutoff, repeats)
    skewed = time_methods(METHODS, sheared(crystals), cutoff, repeats)
    return [{"method": name, "ms_plain": 1e3 * plain[name][0], "ms_sheared": 1e3 * skewed[name][0],
             "slowdown": skewed[name][0] / plain[name][0], "edges_plain": plain[name][1],
             "edges_sheared": skewed[name][1]} for name in METHODS]


def machine(load_start: tuple) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {p: metadata.version(p) for p in ("torch", "numpy", "vesin", "pymatgen",
                                                   "matscipy")}
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.is_available(),
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_average_start": load_start, "load_average_end": os.getloadavg(), **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "graph.json")
    args = parser.parse_args()
    started, load_start = time.perf_counter(), os.getloadavg()
    crystals = load_crystals()
    print(f"{len(crystals)} structures, {sum(len(f) for f, _ in crystals)} atoms; "
          f"VESIN_MIN_ATOMS = {graph_module.VESIN_MIN_ATOMS}")

    batch = bench_batch(crystals, (5.0, 6.0, 8.0), args.repeats)
    print("\nBatch of 256 structures (ms, median; ratio to the fastest)")
    print(f"{'method':16s}" + "".join(f"{c:>22s}" for c in ("5 A", "6 A", "8 A")))
    for name in METHODS:
        cells = [r for r in batch if r["method"] == name]
        print(f"{name:16s}" + "".join(
            f"{r['ms']:>11.1f} ({r['ratio_to_fastest']:4.2f}x)" + " " * 3 for r in cells))
    print("edges:", {r["cutoff"]: r["edges"] for r in batch if r["method"] == "autoperi torch"})

    size = bench_size(crystals, 6.0, args.repeats)
    print("\nCost per crystal vs atoms per cell (ms, 6 A; autoperi in batches of copies)")
    names = ["autoperi torch", "autoperi vesin", "vesin", "pymatgen", "matscipy"]
    print(f"{'cell':>10s} {'atoms':>6s}" + "".join(f"{n:>16s}" for n in names))
    for base in ("perov_5", "carbon_24"):
        for n in sorted({r["atoms"] for r in size if r["base"] == base}):
            by = {r["method"]: r["ms_per_crystal"] for r in size
                  if r["atoms"] == n and r["base"] == base}
            print(f"{base:>10s} {n:>6d}" + "".join(f"{by[m]:>16.3f}" for m in names))

    shear = bench_shear(crystals, 6.0, args.repeats)
    print("\nSheared cells (same 256 crystals, U = [[1,0,0],[3,1,0],[0,0,1]]), 6 A")
    for r in shear:
        print(f"{r['method']:16s} plain {r['ms_plain']:8.1f} ms  sheared {r['ms_sheared']:8.1f} ms"
              f"  x{r['slowdown']:.2f}  edges {r['edges_plain']} / {r['edges_sheared']}")

    result = {
        "benchmark": "periodic radius graph, CPU, 1 thread",
        "command": "python bench/graph.py" + (f" --repeats {args.repeats}"
                                              if args.repeats != 7 else ""),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(load_start),
        "vesin_min_atoms": graph_module.VESIN_MIN_ATOMS,
        "repeats": args.repeats,
        "batch": batch,
        "size": size,
        "shear": shear,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
