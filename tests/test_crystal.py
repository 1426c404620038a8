import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from autoperi import CrystalBatch
from autoperi.testing import canonical_crystals


@pytest.fixture
def structures():
    crystals = canonical_crystals()
    out = [crystals["fcc_Cu"], crystals["rocksalt_NaCl"], crystals["perovskite_SrTiO3"]]
    out[0] = out[0].copy(properties={"band_gap": 0.0})
    out[2] = out[2].copy(properties={"band_gap": 1.8, "label": "STO"})
    return out


def test_from_structures_layout(structures):
    batch = CrystalBatch.from_structures(structures)
    assert batch.num_atoms.tolist() == [4, 8, 5]
    assert batch.crystal_idx.tolist() == [0] * 4 + [1] * 8 + [2] * 5
    assert batch.atomic_numbers[:4].tolist() == [29] * 4
    assert torch.allclose(batch.lattice[0], 3.61 * torch.eye(3))
    # Numeric properties only; the missing one is NaN.
    assert set(batch.properties) == {"band_gap"}
    gap = batch.properties["band_gap"]
    assert gap[0] == 0.0 and math.isnan(gap[1]) and gap[2] == pytest.approx(1.8)


def test_round_trip_to_structures(structures):
    back = CrystalBatch.from_structures(structures, dtype=torch.float64).to_structures()
    for original, restored in zip(structures, back):
        assert original.species == restored.species
        assert np.allclose(original.lattice.matrix, restored.lattice.matrix)
        assert np.allclose(original.frac_coords, restored.frac_coords)
    assert back[2].properties == {"band_gap": 1.8}
    assert "band_gap" not in back[1].properties  # NaN means absent


def test_split_and_collate_are_inverse(structures):
    batch = CrystalBatch.from_structures(structures)
    parts = batch.split()
    assert [len(p) for p in parts] == [1, 1, 1]
    assert parts[1].num_atoms.tolist() == [8]
    assert torch.equal(parts[2].frac_coords, batch.frac_coords[12:])
    again = CrystalBatch.collate(parts)
    for name in ("atomic_numbers", "frac_coords", "lattice", "num_atoms"):
        assert torch.equal(getattr(again, name), getattr(batch, name))
    assert torch.equal(again.properties["band_gap"].isnan(), batch.properties["band_gap"].isnan())


def test_collate_fills_missing_properties_with_nan(structures):
    a = CrystalBatch.from_structures(structures[:1])
    b = CrystalBatch.from_structures(structures[1:2])
    both = CrystalBatch.collate([a, b])
    assert both.properties["band_gap"][0] == 0.0 and torch.isnan(both.properties["band_gap"][1])


def test_select_orders_crystals(structures):
    batch = CrystalBatch.from_structures(structures)
    picked = batch.select([2, 0])
    assert picked.num_atoms.tolist() == [5, 4]
    assert picked.atomic_numbers[0] == 38  # Sr


def test_replace_is_new_and_validated(structures):
    batch = CrystalBatch.from_structures(structures)
    moved = batch.replace(frac_coords=batch.frac_coords + 0.1)
    assert not torch.equal(moved.frac_coords, batch.frac_coords)
    assert torch.equal(batch.frac_coords, CrystalBatch.from_structures(structures).frac_coords)
    with pytest.raises(ValueError, match="frac_coords"):
        batch.replace(frac_coords=batch.frac_coords[:-1])
    with pytest.raises(ValueError, match="num_atoms"):
        batch.replace(num_atoms=batch.num_atoms + 1)


def test_to_changes_dtype_of_floats_only(structures):
    batch = CrystalBatch.from_structures(structures).to("cpu", torch.float64)
    assert batch.frac_coords.dtype == torch.float64 and batch.lattice.dtype == torch.float64
    assert batch.atomic_numbers.dtype == torch.long


def test_disordered_structure_is_refused():
    from pymatgen.core import Lattice, Structure

    alloy = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        CrystalBatch.from_structures([alloy])


def test_collate_works_in_a_dataloader(structures):
    items = CrystalBatch.from_structures(structures).split()
    loader = DataLoader(items, batch_size=2, collate_fn=CrystalBatch.collate)
    sizes = [b.num_atoms.tolist() for b in loader]
    assert sizes == [[4, 8], [5]]


def test_pyg_round_trip(structures):
    pytest.importorskip("torch_geometric")
    batch = CrystalBatch.from_structures(structures)
    data = batch.to_pyg()
    assert data.num_graphs == 3
    # pos is Cartesian: Sr-Ti body diagonal of the perovskite.
    sto = data.get_example(2)
    assert torch.allclose(sto.pos[1], torch.tensor([3.905 / 2] * 3), atol=1e-5)
    back = CrystalBatch.from_pyg(data)
    for name in ("atomic_numbers", "frac_coords", "lattice", "num_atoms"):
        assert torch.equal(getattr(back, name), getattr(batch, name))
    assert torch.equal(back.properties["band_gap"].isnan(), batch.properties["band_gap"].isnan())
