"""Per-term training losses of train_log.csv files over step windows, next to the coordinate
loss of a velocity that ignores its input (the floor a model must beat).

With a uniform prior and independent coupling each target velocity component is uniform on
[-0.5, 0.5) (variance 1/12); removing the crystal's mean leaves (1 - 1/n) / 12 for an atom of
an n-atom crystal, so predicting zero scores the atom-weighted mean of that.

    python bench/loss_terms.py --dataset mp-20 \
        --log w128=src/autoperi/pretrained/mp-20/train_log.csv \
        --log w256=bench/results/train_log_mp-20_width256_probe.csv \
        --windows 1500:2100 5500:6000 30000:32000
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from autoperi.data.datasets import load_dataset

TERMS = ("train_frac", "train_lattice", "train_types", "train_recon")


def window_means(path: str, low: int, high: int) -> dict[str, float] | None:
    """Mean of each loss term over logged steps low..high (None if no row is there)."""
    rows = [r for r in csv.DictReader(open(path)) if low <= int(r["step"]) <= high]
    if not rows:
        return None
    return {t: float(np.mean([float(r[t]) for r in rows if r.get(t)])) for t in TERMS}


def zero_velocity_loss(num_atoms: np.ndarray) -> float:
    """Coordinate MSE of predicting zero velocity, atom-weighted over crystals."""
    return float(np.sum(num_atoms * (1 - 1 / num_atoms) / 12) / np.sum(num_atoms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mp-20")
    parser.add_argument("--log", action="append", required=True, help="name=path")
    parser.add_argument("--windows", nargs="+", default=["1500:2100"])
    parser.add_argument("--out", default="bench/results/loss_terms.json")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset, progress=False)
    counts = dataset.crystals.num_atoms[dataset.indices("train")].numpy().astype(float)
    result = {"dataset": args.dataset, "zero_velocity_frac_loss": zero_velocity_loss(counts),
              "windows": {}}
    for spec in args.log:
        name, path = spec.split("=", 1)
        for window in args.windows:
            low, high = map(int, window.split(":"))
            result["windows"][f"{name} {window}"] = window_means(path, low, high)
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
