from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from autoperi.data import datasets
from autoperi.data.clean import CleanOptions, clean_structure, crystal_system
from autoperi.data.datasets import NAMED, load_dataset, stratified_split
from autoperi.data.io import read_structures
from autoperi.testing import canonical_crystals

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "mp20_sample.csv"


def test_space_groups_agree_with_materials_project():
    # MP-20 ships spglib space groups computed by Materials Project: an independent oracle.
    for s in read_structures(SAMPLE)[:30]:
        assert clean_structure(s).properties["spacegroup"] == s.properties["spacegroup.number"]


def test_clean_reduces_conventional_to_primitive_and_keeps_properties():
    nacl = canonical_crystals()["rocksalt_NaCl"].copy(properties={"band_gap": 5.0})
    cleaned = clean_structure(nacl)
    assert len(nacl) == 8 and len(cleaned) == 2
    assert cleaned.properties == {"band_gap": 5.0, "spacegroup": 225}
    assert cleaned.volume == pytest.approx(nacl.volume / 4)
    kept = clean_structure(nacl, CleanOptions(primitive=False))
    assert len(kept) == 8


def test_symmetrize_restores_ideal_positions():
    sto = canonical_crystals()["perovskite_SrTiO3"]
    noisy = sto.copy()
    noisy.translate_sites([1], [0.004, -0.003, 0.002])  # below symprec
    out = clean_structure(noisy, CleanOptions(symmetrize=True))
    assert out.properties["spacegroup"] == 221
    # In the symmetrized cell every interatomic distance is one of the ideal ones.
    ideal = np.unique(np.round(sto.distance_matrix, 4))
    got = np.unique(np.round(out.distance_matrix, 4))
    assert np.allclose(sorted(ideal), sorted(got), atol=1e-3)


def test_crystal_system():
    assert crystal_system(1) == "triclinic" and crystal_system(225) == "cubic"
    assert crystal_system(167) == "trigonal" and crystal_system(194) == "hexagonal"
    with pytest.raises(ValueError):
        crystal_system(231)


def test_stratified_split_fractions_per_stratum_and_seed():
    strata = np.repeat([1, 2, 3], [1000, 200, 7])
    split = stratified_split(strata, seed=3)
    for s, n in ((1, 1000), (2, 200)):
        counts = Counter(split[strata == s])
        assert counts["train"] == 0.8 * n and counts["val"] == 0.1 * n
    assert np.array_equal(split, stratified_split(strata, seed=3))
    assert not np.array_equal(split, stratified_split(strata, seed=4))
    with pytest.raises(ValueError):
        stratified_split(strata, (0.5, 0.2, 0.2))


def test_user_csv_dataset_is_built_cached_and_reloaded(tmp_path, monkeypatch):
    d = load_dataset(str(SAMPLE), cache_dir=tmp_path, seed=1)
    assert len(d) == 60
    counts = Counter(d.split)
    assert set(counts) == {"train", "val", "test"} and 40 <= counts["train"] <= 54
    assert d.ids[0] == "mp-1221227"
    assert torch.all(d.crystals.properties["spacegroup"] >= 1)
    assert "band_gap" in d.crystals.properties
    # The second load comes from the cache, without reading or cleaning.
    monkeypatch.setattr(datasets, "build_dataset", lambda c, p=True: pytest.fail("cache not used"))
    again = load_dataset(str(SAMPLE), cache_dir=tmp_path, seed=1)
    assert np.array_equal(again.split, d.split) and again.ids == d.ids
    assert torch.equal(again.crystals.frac_coords, d.crystals.frac_coords)


def test_dataset_items_and_loader(tmp_path):
    d = load_dataset(str(SAMPLE), cache_dir=tmp_path)
    item = d[3]
    assert len(item) == 1 and item.num_atoms.item() == len(d.structures()[3])
    batches = list(d.loader("train", batch_size=16))
    assert sum(len(b) for b in batches) == len(d.indices("train"))
    assert batches[0].frac_coords.shape[0] == int(batches[0].num_atoms.sum())


def test_exact_duplicates_are_removed(tmp_path):
    text = SAMPLE.read_text().splitlines()
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("\n".join(text + text[1:]) + "\n")  # every row twice
    d = load_dataset(str(doubled), cache_dir=tmp_path / "cache")
    assert len(d) == 60 and d.duplicates_removed == 60


def test_different_seed_gives_different_split(tmp_path):
    a = load_dataset(str(SAMPLE), cache_dir=tmp_path, seed=0)
    b = load_dataset(str(SAMPLE), cache_dir=tmp_path, seed=1)
    assert not np.array_equal(a.split, b.split)


def test_named_datasets_are_bundled():
    for name, info in NAMED.items():
        files = datasets._source_files(name, "bundled", None)
        assert files and all(f.exists() for f in files), name
        assert all(url.startswith("https://") for url in info.urls)


def test_download_source_fetches_once(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "train.csv").write_text(SAMPLE.read_text())
    info = datasets.DatasetInfo((), (f"file://{remote}/train.csv",), ("band_gap",), "test")
    monkeypatch.setitem(NAMED, "tiny", info)
    d = load_dataset("tiny", cache_dir=tmp_path / "cache", source="download")
    assert len(d) == 60
    (remote / "train.csv").unlink()  # the cached copy is used from now on
    assert len(load_dataset("tiny", cache_dir=tmp_path / "cache", source="download")) == 60


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither a named dataset"):
        load_dataset("perov-6", cache_dir=tmp_path)


@pytest.mark.slow
def test_bundled_perov5_end_to_end(tmp_path):
    d = load_dataset("perov-5", cache_dir=tmp_path)
    assert len(d) == 1024 + 3787
    assert set(d.crystals.num_atoms.tolist()) == {5}
    assert abs(len(d.indices("test")) - 0.1 * len(d)) <= 5


def test_symmetry_operations_map_each_crystal_onto_itself(tmp_path):
    from autoperi.geometry.torus import shortest_displacement

    d = load_dataset(str(SAMPLE), cache_dir=tmp_path)
    ops, counts = d.symmetry([0, 5, 7])
    assert len(ops) == int(counts.sum()) and ops.shape[1:] == (3, 4)
    start = 0
    for k, n in zip([0, 5, 7], counts.tolist()):
        item = d[k]
        frac, z = item.frac_coords.float(), item.atomic_numbers
        for op in ops[start:start + n]:
            moved = frac @ op[:, :3].T + op[:, 3]
            # Every image lands on an atom of the same element (symprec 0.1 Å).
            delta = shortest_displacement(moved[:, None, :] - frac[None, :, :])
            dist = torch.linalg.norm(delta @ item.lattice[0].float(), dim=-1)
            same = z[:, None] == z[None, :]
            assert torch.all(torch.where(same, dist, torch.inf).min(dim=1).values < 0.2)
        start += n
    # Groups have the right order: P1 has 1 operation, Fm-3m primitive 48.
    groups = d.crystals.properties["spacegroup"]
    orders = dict(zip(groups.tolist(), d.symmetry_counts.tolist()))
    assert orders.get(225, 48) == 48 and orders.get(1, 1) == 1


def test_training_dataset_splits_as_the_config_says(tmp_path, monkeypatch):
    from autoperi.config import DataConfig
    from autoperi.data.datasets import training_dataset

    monkeypatch.setenv("AUTOPERI_CACHE", str(tmp_path))
    data = DataConfig(dataset=str(SAMPLE), seed=3, max_atoms=12)
    got = training_dataset(data, progress=False)
    want = load_dataset(str(SAMPLE), seed=3, max_atoms=12, progress=False)
    other = load_dataset(str(SAMPLE), seed=4, max_atoms=12, progress=False)
    ids = lambda d: [s.properties.get("material_id") for s in d.structures("test")]  # noqa: E731
    assert ids(got) == ids(want) and ids(got) != ids(other)
    assert max(len(s) for s in got.structures()) <= 12
