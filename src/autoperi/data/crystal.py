"""CrystalBatch: many crystals as flat-concatenated tensors (DESIGN.md §2).

Atom fields are [N, ...], crystal fields [B, ...]; `crystal_idx` [N] says which crystal an atom
belongs to. Batches are immutable: derive new ones with `replace`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from pymatgen.core import Lattice, Structure
from torch import Tensor

from autoperi.geometry.graph import PeriodicGraph, crystal_index, radius_graph

ATOM_FIELDS = ("atomic_numbers", "frac_coords")
CRYSTAL_FIELDS = ("lattice", "num_atoms")


@dataclasses.dataclass(frozen=True, eq=False)
class CrystalBatch:
    """B crystals with N atoms in all.

    atomic_numbers [N] long (Z), frac_coords [N, 3], lattice [B, 3, 3] (rows a, b, c, Å),
    num_atoms [B] long, properties: name -> [B] float (NaN where a crystal lacks it).
    """

    atomic_numbers: Tensor
    frac_coords: Tensor
    lattice: Tensor
    num_atoms: Tensor
    properties: dict[str, Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n, b = self.atomic_numbers.shape[0], self.lattice.shape[0]
        if self.frac_coords.shape != (n, 3):
            raise ValueError(f"frac_coords must be [{n}, 3], got {tuple(self.frac_coords.shape)}")
        if self.lattice.shape != (b, 3, 3):
            raise ValueError(f"lattice must be [B, 3, 3], got {tuple(self.lattice.shape)}")
        if self.num_atoms.shape != (b,) or int(self.num_atoms.sum()) != n:
            raise ValueError(
                f"num_atoms must be [{b}] summing to {n} atoms, got {self.num_atoms.tolist()}"
            )
        for name, value in self.properties.items():
            if value.shape != (b,):
                raise ValueError(f"property {name!r} must be [{b}], got {tuple(value.shape)}")

    # ----------------------------------------------------------------- derived fields
    @property
    def num_crystals(self) -> int:
        return int(self.lattice.shape[0])

    def __len__(self) -> int:
        return self.num_crystals

    @property
    def crystal_idx(self) -> Tensor:
        """Crystal of each atom, [N]."""
        return crystal_index(self.num_atoms)

    @property
    def device(self) -> torch.device:
        return self.frac_coords.device

    def graph(
        self, cutoff: float, max_neighbors: int | None = None, backend: str = "auto"
    ) -> PeriodicGraph:
        """Periodic radius graph of the current state (see geometry.graph.radius_graph)."""
        return radius_graph(
            self.frac_coords, self.lattice, self.num_atoms, cutoff, max_neighbors, backend
        )

    # ----------------------------------------------------------------- derivation
    def replace(self, **changes) -> CrystalBatch:
        """A new batch with some fields replaced (shapes are validated)."""
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> CrystalBatch:
        """Move to a device; `dtype` changes the floating fields (coordinates, lattice)."""
        float_kw = {"device": device, "dtype": dtype} if dtype else {"device": device}
        return CrystalBatch(
            atomic_numbers=self.atomic_numbers.to(device),
            frac_coords=self.frac_coords.to(**float_kw),
            lattice=self.lattice.to(**float_kw),
            num_atoms=self.num_atoms.to(device),
            properties={k: v.to(device) for k, v in self.properties.items()},
        )

    def split(self) -> list[CrystalBatch]:
        """One single-crystal batch per crystal, in order."""
        counts = self.num_atoms.tolist()
        numbers = self.atomic_numbers.split(counts)
        coords = self.frac_coords.split(counts)
        return [
            CrystalBatch(
                atomic_numbers=numbers[b],
                frac_coords=coords[b],
                lattice=self.lattice[b : b + 1],
                num_atoms=self.num_atoms[b : b + 1],
                properties={k: v[b : b + 1] for k, v in self.properties.items()},
            )
            for b in range(self.num_crystals)
        ]

    def select(self, indices: Sequence[int] | Tensor) -> CrystalBatch:
        """The crystals at `indices`, in that order (gathered, no per-crystal loop)."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device).reshape(-1)
        starts = torch.cumsum(self.num_atoms, 0) - self.num_atoms
        counts = self.num_atoms[idx]
        new_starts = torch.cumsum(counts, 0) - counts
        offset = torch.arange(int(counts.sum()), device=self.device)
        offset = offset - torch.repeat_interleave(new_starts, counts)
        atoms = torch.repeat_interleave(starts[idx], counts) + offset
        return CrystalBatch(
            atomic_numbers=self.atomic_numbers[atoms],
            frac_coords=self.frac_coords[atoms],
            lattice=self.lattice[idx],
            num_atoms=counts,
            properties={k: v[idx] for k, v in self.properties.items()},
        )

    @staticmethod
    def collate(batches: Sequence[CrystalBatch]) -> CrystalBatch:
        """Concatenate batches (usable as a torch DataLoader collate_fn).

        Properties missing from some batches are filled with NaN.
        """
        if not batches:
            raise ValueError("cannot collate an empty list of batches")
        names = sorted({name for b in batches for name in b.properties})

        def prop(b: CrystalBatch, name: str) -> Tensor:
            if name in b.properties:
                return b.properties[name]
            return torch.full((b.num_crystals,), math.nan, device=b.device)

        return CrystalBatch(
            atomic_numbers=torch.cat([b.atomic_numbers for b in batches]),
            frac_coords=torch.cat([b.frac_coords for b in batches]),
            lattice=torch.cat([b.lattice for b in batches]),
            num_atoms=torch.cat([b.num_atoms for b in batches]),
            properties={n: torch.cat([prop(b, n) for b in batches]) for n in names},
        )

    # ----------------------------------------------------------------- pymatgen
    @staticmethod
    def from_structures(
        structures: Iterable[Structure],
        property_names: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> CrystalBatch:
        """Batch ordered pymatgen structures; numeric `structure.properties` become properties.

        property_names: which properties to keep (default: every numeric one found).
        """
        structures = list(structures)
        if not structures:
            raise ValueError("from_structures needs at least one structure")
        for k, s in enumerate(structures):
            if not s.is_ordered:
                raise ValueError(f"structure {k} ({s.formula}) is disordered; order it first")
        if property_names is None:
            found = {
                name
                for s in structures
                for name, value in (s.properties or {}).items()
                if _is_number(value)
            }
            property_names = sorted(found)
        props = {
            name: torch.tensor(
                [_as_float((s.properties or {}).get(name)) for s in structures], dtype=dtype
            )
            for name in property_names
        }
        return CrystalBatch(
            atomic_numbers=torch.tensor(
                np.concatenate([s.atomic_numbers for s in structures]), dtype=torch.long
            ),
            frac_coords=torch.tensor(
                np.concatenate([s.frac_coords for s in structures]), dtype=dtype
            ),
            lattice=torch.tensor(np.stack([s.lattice.matrix for s in structures]), dtype=dtype),
            num_atoms=torch.tensor([len(s) for s in structures], dtype=torch.long),
            properties=props,
        )

    def to_structures(self) -> list[Structure]:
        """pymatgen structures (properties that are not NaN go to `structure.properties`)."""
        out = []
        for b, part in enumerate(self.split()):
            props = {
                k: float(v[b]) for k, v in self.properties.items() if not math.isnan(float(v[b]))
            }
            out.append(
                Structure(
                    Lattice(part.lattice[0].detach().cpu().double().numpy()),
                    part.atomic_numbers.cpu().tolist(),
                    part.frac_coords.detach().cpu().double().numpy(),
                    properties=props,
                )
            )
        return out

    # ----------------------------------------------------------------- PyTorch Geometric
    def to_pyg(self):
        """A torch_geometric Batch (extra `pyg`): pos is Cartesian, frac/lattice kept as fields."""
        from torch_geometric.data import Batch, Data

        items = []
        for part in self.split():
            items.append(
                Data(
                    z=part.atomic_numbers,
                    frac_coords=part.frac_coords,
                    pos=part.frac_coords @ part.lattice[0],
                    lattice=part.lattice,
                    num_nodes=int(part.num_atoms[0]),
                    **{k: v for k, v in part.properties.items()},
                )
            )
        return Batch.from_data_list(items)

    @staticmethod
    def from_pyg(data) -> CrystalBatch:
        """Inverse of `to_pyg` for a torch_geometric Batch or a single Data."""
        from torch_geometric.data import Batch

        if not isinstance(data, Batch):
            data = Batch.from_data_list([data])
        reserved = {"z", "frac_coords", "pos", "lattice", "batch", "ptr"}
        b = data.num_graphs
        props = {
            k: v
            for k, v in data.to_dict().items()
            if k not in reserved and torch.is_tensor(v) and v.shape == (b,)
        }
        return CrystalBatch(
            atomic_numbers=data.z,
            frac_coords=data.frac_coords,
            lattice=data.lattice.reshape(b, 3, 3),
            num_atoms=torch.bincount(data.batch, minlength=b),
            properties=props,
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _as_float(value) -> float:
    return float(value) if _is_number(value) else math.nan
