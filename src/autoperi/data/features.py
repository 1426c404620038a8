"""Elemental features (Magpie table) and property scalers.

The table is matminer's Magpie data (see files/README.md), read once and cached. Missing
entries are filled with the column median and flagged in a companion mask, so a model can
tell a measured value from a filled one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor

MAX_Z = 103  # heaviest element in the table (Lr)


@functools.lru_cache(maxsize=1)
def _raw_table() -> tuple[tuple[str, ...], np.ndarray]:
    text = resources.files("autoperi.data").joinpath("files/magpie_elements.csv").read_text()
    lines = text.strip().splitlines()
    names = tuple(lines[0].split(",")[1:])
    values = np.full((MAX_Z + 1, len(names)), np.nan)
    for line in lines[1:]:
        z, *cells = line.split(",")
        values[int(z)] = [float(c) if c else np.nan for c in cells]
    return names, values


def element_feature_names() -> tuple[str, ...]:
    return _raw_table()[0]


def element_features(standardize: bool = True) -> tuple[Tensor, Tensor]:
    """(features [MAX_Z + 1, F], missing [MAX_Z + 1, F] bool), rows indexed by Z.

    Row 0 is padding (zeros, all missing). Missing entries hold the column median;
    with `standardize` every column has zero mean and unit variance over the elements.
    """
    _, raw = _raw_table()
    missing = np.isnan(raw)
    filled = np.where(missing, np.nanmedian(raw[1:], axis=0), raw)
    if standardize:
        mean, std = filled[1:].mean(axis=0), filled[1:].std(axis=0)
        filled = (filled - mean) / np.where(std > 0, std, 1.0)
    filled[0] = 0.0
    missing[0] = True
    return torch.tensor(filled, dtype=torch.float32), torch.tensor(missing)


@functools.lru_cache(maxsize=1)
def covalent_radii() -> np.ndarray:
    """Covalent radius of each element in Å indexed by Z, [MAX_Z + 1] (Cordero et al. 2008,
    from the Magpie table); NaN where the table has no value (Z = 0 and Bk..Lr)."""
    table, missing = element_features(standardize=False)
    column = element_feature_names().index("CovalentRadius")
    radii = table[:, column].double().numpy() / 100.0  # pm -> Å
    radii[missing[:, column].numpy()] = np.nan
    return radii


def composition_features(atomic_numbers: Tensor, crystal_idx: Tensor, num_crystals: int) -> Tensor:
    """Magpie-style composition fingerprint [B, 5F]: per-crystal mean, mean absolute
    deviation, min, max and range of each (unstandardized) elemental property over atoms.
    """
    if int(atomic_numbers.max()) > MAX_Z or int(atomic_numbers.min()) < 1:
        raise ValueError(f"atomic numbers must be in 1..{MAX_Z}, got {atomic_numbers.unique()}")
    table, _ = element_features(standardize=False)
    x = table.to(atomic_numbers.device)[atomic_numbers]  # [N, F]
    f = x.shape[1]
    counts = torch.bincount(crystal_idx, minlength=num_crystals).clamp_min(1).unsqueeze(1)
    index = crystal_idx.unsqueeze(1).expand(-1, f)
    zeros = x.new_zeros(num_crystals, f)
    mean = zeros.index_add(0, crystal_idx, x) / counts
    deviation = zeros.index_add(0, crystal_idx, (x - mean[crystal_idx]).abs()) / counts
    low = zeros.scatter_reduce(0, index, x, "amin", include_self=False)
    high = zeros.scatter_reduce(0, index, x, "amax", include_self=False)
    return torch.cat([mean, deviation, low, high, high - low], dim=1)  # [B, 5F]


@dataclass(frozen=True)
class PropertyScaler:
    """Standardizes each property with its mean and std over known (non-NaN) values."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @staticmethod
    def fit(properties: dict[str, Tensor]) -> PropertyScaler:
        names = tuple(sorted(properties))
        means, stds = [], []
        for name in names:
            known = properties[name][~torch.isnan(properties[name])].double()
            if len(known) == 0:
                raise ValueError(f"property {name!r} has no known values to fit a scaler on")
            means.append(float(known.mean()))
            std = float(known.std()) if len(known) > 1 else 0.0
            stds.append(std if std > 0 and math.isfinite(std) else 1.0)
        return PropertyScaler(names, tuple(means), tuple(stds))

    def transform(self, properties: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: (properties[n] - m) / s for n, m, s in self._items() if n in properties}

    def inverse(self, scaled: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: scaled[n] * s + m for n, m, s in self._items() if n in scaled}

    def to_dict(self) -> dict:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std)}

    @staticmethod
    def from_dict(data: dict) -> PropertyScaler:
        return PropertyScaler(tuple(data["names"]), tuple(data["mean"]), tuple(data["std"]))

    def _items(self):
        return zip(self.names, self.mean, self.std)
