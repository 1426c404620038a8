"""Periodic radius graph against independent oracles on real structures.

Oracles: brute-force image enumeration (numpy, image range from the cell heights), vesin
called directly and pymatgen's find_points_in_spheres. The structures are real rows from
Perov-5, Carbon-24 and MP-20 (tests/data/graph_structures.csv, see tests/data/README.md),
including cells with 13-22 degree angles and one-atom cells smaller than the cutoff.
"""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import autoperi.geometry.graph as graph_module
from autoperi.data.crystal import CrystalBatch
from autoperi.data.io import read_structures
from autoperi.geometry.graph import (
    PeriodicGraph,
    crystal_index,
    edge_lengths,
    edge_vectors,
    radius_graph,
)
from autoperi.geometry.lattice import params_to_lattice
from autoperi.geometry.torus import wrap
from autoperi.testing import random_rotation

DATA = Path(__file__).parent / "data" / "graph_structures.csv"
CUTOFFS = (3.0, 5.0, 8.0)
BOUNDARY = 1e-6  # pairs this close to the cutoff are left out of comparisons with libraries
F64 = torch.float64


@pytest.fixture(scope="module")
def structures():
    result = read_structures(DATA)
    assert len(result) == 22 and not result.skipped
    return result.structures


@pytest.fixture(scope="module")
def batch(structures):
    return CrystalBatch.from_structures(structures, property_names=[], dtype=F64)


# ---------------------------------------------------------------------- oracles
def brute_force(frac: np.ndarray, lattice: np.ndarray, cutoff: float) -> dict:
    """{(j, i, n0, n1, n2): length} over every image that can reach the cutoff."""
    volume = abs(np.linalg.det(lattice))
    h = volume / np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
    spread = frac.max(axis=0) - frac.min(axis=0)
    # |frac_j - frac_i + n|_k * h_k <= |vector|, so |n_k| < cutoff / h_k + spread_k.
    reach = np.ceil(cutoff / h + spread).astype(int) + 1
    images = np.array(list(itertools.product(*[range(-r, r + 1) for r in reach])))
    cart, shifts = frac @ lattice, images @ lattice
    edges = {}
    for i in range(len(frac)):
        vec = cart[:, None, :] + shifts[None, :, :] - cart[i]  # [j, I, 3]
        dist = np.linalg.norm(vec, axis=-1)
        for j, k in zip(*np.nonzero(dist < cutoff), strict=True):
            if i != j or images[k].any():
                edges[(int(j), i, *map(int, images[k]))] = float(dist[j, k])
    return edges


def vesin_edges(frac: np.ndarray, lattice: np.ndarray, cutoff: float) -> dict:
    from vesin import NeighborList

    i, j, shifts, d = NeighborList(cutoff=cutoff, full_list=True).compute(
        points=frac @ lattice, box=lattice, periodic=True, quantities="ijSd"
    )
    return {(int(b), int(a), *map(int, s)): float(x)
            for a, b, s, x in zip(i, j, shifts, d, strict=True)}


def pymatgen_edges(frac: np.ndarray, lattice: np.ndarray, cutoff: float) -> dict:
    from pymatgen.optimization.neighbors import find_points_in_spheres

    cart = np.ascontiguousarray(frac @ lattice)
    center, neighbor, offsets, d = find_points_in_spheres(
        cart, cart, r=cutoff, pbc=np.array([1, 1, 1], dtype=np.int64),
        lattice=np.ascontiguousarray(lattice), tol=1e-8,
    )
    return {
        (int(b), int(a), *map(int, np.round(s))): float(x)
        for a, b, s, x in zip(center, neighbor, offsets, d, strict=True)
        if x > 1e-8  # pymatgen lists each atom as its own neighbour at distance 0
    }


def graph_edges(frac, lattice, cutoff, **kw) -> dict:
    frac_t = torch.tensor(np.array(frac), dtype=F64)
    lat_t = torch.tensor(np.array(lattice), dtype=F64)[None]
    g = radius_graph(frac_t, lat_t, torch.tensor([len(frac_t)]), cutoff, **kw)
    lengths = edge_lengths(frac_t, lat_t, torch.zeros(len(frac_t), dtype=torch.long), g)
    assert (lengths < cutoff).all()
    keys = torch.cat([g.edge_index.T, g.edge_image], dim=1).tolist()
    return {tuple(k): float(x) for k, x in zip(keys, lengths.tolist(), strict=True)}


def away_from_cutoff(edges: dict, cutoff: float) -> set:
    return {k for k, d in edges.items() if abs(d - cutoff) > BOUNDARY}


def rows(graph: PeriodicGraph) -> list:
    """(target, source, image) of every edge, as lists."""
    s, t = graph.edge_index
    return torch.cat([t[:, None], s[:, None], graph.edge_image], dim=1).tolist()


def assert_same_graph(a: PeriodicGraph, b: PeriodicGraph):
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.edge_image, b.edge_image)


def batch_graph(batch: CrystalBatch, cutoff: float, **kw) -> PeriodicGraph:
    return radius_graph(batch.frac_coords, batch.lattice, batch.num_atoms, cutoff, **kw)


# ---------------------------------------------------------------------- real structures
@pytest.mark.parametrize("cutoff", CUTOFFS)
@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_matches_brute_force_on_real_structures(structures, cutoff, backend):
    total = 0
    for s in structures:
        frac, lattice = s.frac_coords, s.lattice.matrix
        ours = graph_edges(frac, lattice, cutoff, backend=backend)
        expected = brute_force(frac, lattice, cutoff)
        assert set(ours) == set(expected), s.formula
        for key, d in ours.items():
            assert d == pytest.approx(expected[key], abs=1e-9)
        total += len(ours)
    assert total > 1000


@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_matches_vesin_and_pymatgen_on_real_structures(structures, cutoff):
    for s in structures:
        frac, lattice = s.frac_coords, s.lattice.matrix
        ours = away_from_cutoff(graph_edges(frac, lattice, cutoff), cutoff)
        assert ours == away_from_cutoff(vesin_edges(frac, lattice, cutoff), cutoff), s.formula
        assert ours == away_from_cutoff(pymatgen_edges(frac, lattice, cutoff), cutoff), s.formula


@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_backends_give_identical_canonical_graphs(batch, cutoff):
    by_torch = batch_graph(batch, cutoff, backend="torch")
    assert by_torch.num_edges > 1000
    assert_same_graph(by_torch, batch_graph(batch, cutoff, backend="vesin"))
    assert_same_graph(by_torch, batch_graph(batch, cutoff, backend="auto"))
    order = rows(by_torch)
    assert order == sorted(order)  # canonical: by target, source, image
    assert len({tuple(r) for r in order}) == len(order)


def test_mixed_auto_batch_equals_single_backends(batch, monkeypatch):
    monkeypatch.setattr(graph_module, "VESIN_MIN_ATOMS", 6)  # part torch, part vesin
    assert_same_graph(batch_graph(batch, 5.0), batch_graph(batch, 5.0, backend="torch"))


def test_torch_backend_chunks_and_groups_do_not_change_the_result(batch, monkeypatch):
    expected = batch_graph(batch, 6.0, backend="torch")
    monkeypatch.setattr(graph_module, "_CHUNK", 300)  # many chunks
    monkeypatch.setattr(graph_module, "_GROUP_COST", 0)  # one group per window size
    assert_same_graph(batch_graph(batch, 6.0, backend="torch"), expected)
    monkeypatch.setattr(graph_module, "_GROUP_COST", 10**12)  # one group for all
    assert_same_graph(batch_graph(batch, 6.0, backend="torch"), expected)


def test_batched_graph_is_the_per_crystal_graphs_concatenated(batch):
    edge_index, images = [], []
    offset = 0
    for part in batch.split():
        g = batch_graph(part, 5.0)
        edge_index.append(g.edge_index + offset)
        images.append(g.edge_image)
        offset += int(part.num_atoms[0])
    expected = PeriodicGraph(torch.cat(edge_index, dim=1), torch.cat(images))
    assert_same_graph(batch_graph(batch, 5.0), expected)


@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_rotating_the_lattice_changes_nothing_but_the_vectors(batch, backend):
    g = batch_graph(batch, 6.0, backend=backend)
    for seed in range(3):
        rotation = random_rotation(seed)
        rotated = batch.lattice @ rotation  # cart = frac @ lattice rotates by `rotation`
        g_rot = radius_graph(batch.frac_coords, rotated, batch.num_atoms, 6.0, backend=backend)
        assert_same_graph(g_rot, g)
        vec = edge_vectors(batch.frac_coords, batch.lattice, batch.crystal_idx, g)
        vec_rot = edge_vectors(batch.frac_coords, rotated, batch.crystal_idx, g)
        torch.testing.assert_close(vec_rot, vec @ rotation)


@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_translating_all_atoms_relabels_images_only(batch, backend):
    g = batch_graph(batch, 6.0, backend=backend)
    lengths = edge_lengths(batch.frac_coords, batch.lattice, batch.crystal_idx, g)
    gen = torch.Generator().manual_seed(0)
    shift = torch.rand(len(batch), 3, generator=gen, dtype=F64)[batch.crystal_idx]
    moved = batch.frac_coords + shift
    wrapped = wrap(moved)
    lattice_shift = torch.round(moved - wrapped).long()  # m: frac' = frac + t - m
    g_t = radius_graph(wrapped, batch.lattice, batch.num_atoms, 6.0, backend=backend)
    # Edge (j -> i, n) becomes (j -> i, n + m_j - m_i): same pairs, same lengths.
    s, t = g.edge_index
    relabelled = torch.cat([t[:, None], s[:, None], g.edge_image + lattice_shift[s]
                            - lattice_shift[t]], dim=1)
    assert sorted(relabelled.tolist()) == rows(g_t)
    # The invariant that needs no bookkeeping: the multiset of lengths of each (i, j) pair.
    lengths_t = edge_lengths(wrapped, batch.lattice, batch.crystal_idx, g_t)

    def per_pair(graph, length):
        out = {}
        for (j, i), d in zip(graph.edge_index.T.tolist(), length.tolist(), strict=True):
            out.setdefault((i, j), []).append(d)
        return {k: sorted(v) for k, v in out.items()}

    before, after = per_pair(g, lengths), per_pair(g_t, lengths_t)
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_allclose(after[key], before[key], rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_coordinates_far_outside_the_cell(batch, backend):
    g = batch_graph(batch, 5.0, backend=backend)
    gen = torch.Generator().manual_seed(1)
    far = torch.randint(-10**6, 10**6, (len(batch.frac_coords), 3), generator=gen)
    g_far = radius_graph(batch.frac_coords + far, batch.lattice, batch.num_atoms, 5.0,
                         backend=backend)
    s, t = g.edge_index
    image = g.edge_image - far[s] + far[t]  # the same vectors from the far-away copies
    assert_same_graph(g_far, PeriodicGraph(g.edge_index, image))


# ---------------------------------------------------------------------- skewed and small cells
SHEARS = [
    [[1, 0, 0], [3, 1, 0], [0, 0, 1]],
    [[1, 0, 0], [4, 1, 0], [-4, 3, 1]],
]


@pytest.mark.parametrize("shear", SHEARS)
@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_a_sheared_description_of_a_crystal_has_the_same_graph(structures, shear, backend):
    u = np.array(shear, dtype=float)
    for s in structures[::3]:
        frac, lattice = s.frac_coords, s.lattice.matrix
        frac_u, lattice_u = frac @ np.linalg.inv(u), u @ lattice  # same crystal, skewed cell
        ours = graph_edges(frac_u, lattice_u, 5.0, backend=backend)
        assert set(ours) == set(brute_force(frac_u, lattice_u, 5.0))
        # Image n in the original cell is n @ inv(U) in the sheared one.
        original = graph_edges(frac, lattice, 5.0)
        mapped = {(j, i, *map(int, np.rint(np.array(n) @ np.linalg.inv(u)))): d
                  for (j, i, *n), d in original.items()}
        assert set(mapped) == set(ours)
        for key, d in ours.items():
            assert d == pytest.approx(mapped[key], abs=1e-9)


@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_very_acute_random_cells_match_brute_force(backend):
    gen = np.random.default_rng(0)
    checked = 0
    for _ in range(12):
        angles = np.deg2rad(gen.uniform(10, 20, 3))
        lengths = gen.uniform(2.0, 5.0, 3)
        lattice = params_to_lattice(torch.tensor(lengths)[None], torch.tensor(angles)[None])[0]
        if torch.linalg.det(lattice) < 0.5:  # these angles admit no cell
            continue
        frac = gen.uniform(-1.0, 2.0, (int(gen.integers(1, 5)), 3))  # not wrapped, on purpose
        cutoff = float(gen.uniform(2.0, 6.0))
        ours = graph_edges(frac, lattice.numpy(), cutoff, backend=backend)
        assert set(ours) == set(brute_force(frac, lattice.numpy(), cutoff))
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_cells_much_smaller_than_the_cutoff(backend):
    # Simple cubic a = 1.2 Å, cutoff 5: every lattice vector shorter than 5 Å is an edge.
    ours = graph_edges(np.zeros((1, 3)), 1.2 * np.eye(3), 5.0, backend=backend)
    r = 5
    count = sum(1 for n in itertools.product(range(-r, r + 1), repeat=3)
                if 0 < 1.2 * math.sqrt(sum(x * x for x in n)) < 5.0)
    assert len(ours) == count > 250
    lattice = np.array([[1.5, 0.0, 0.0], [0.4, 1.7, 0.0], [0.3, -0.5, 2.0]])
    frac = np.array([[0.1, 0.2, 0.3], [0.7, 0.6, 0.9]])
    assert set(graph_edges(frac, lattice, 8.0, backend=backend)) == set(
        brute_force(frac, lattice, 8.0))


# ---------------------------------------------------------------------- textbook crystals
FCC_A, BCC_A = 3.61, 2.87
CELLS = {
    "fcc_primitive": (FCC_A / 2 * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]), [[0, 0, 0]]),
    "fcc_conventional": (FCC_A * np.eye(3),
                         [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    "bcc_primitive": (BCC_A / 2 * np.array([[-1, 1, 1], [1, -1, 1], [1, 1, -1]]), [[0, 0, 0]]),
    "bcc_conventional": (BCC_A * np.eye(3), [[0, 0, 0], [0.5, 0.5, 0.5]]),
}


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_first_neighbour_shells(name, backend):
    lattice, frac = CELLS[name]
    frac = np.array(frac, dtype=float)
    if name.startswith("fcc"):
        first, cutoff, count = FCC_A / math.sqrt(2), 3.0, 12  # next shell at a = 3.61
    else:
        first, cutoff, count = BCC_A * math.sqrt(3) / 2, 2.7, 8  # next shell at a = 2.87
    edges = graph_edges(frac, lattice, cutoff, backend=backend)
    assert len(edges) == count * len(frac)
    targets = [key[1] for key in edges]
    assert all(targets.count(i) == count for i in range(len(frac)))
    np.testing.assert_allclose(list(edges.values()), first, rtol=1e-12)
    second = graph_edges(frac, lattice, 4.0 if name.startswith("fcc") else 3.0, backend=backend)
    assert len(second) == (18 if name.startswith("fcc") else 14) * len(frac)


@pytest.mark.parametrize("name", list(CELLS))
def test_cutoff_equal_to_a_neighbour_distance_is_strict_in_both_backends(name):
    lattice, frac = CELLS[name]
    a = FCC_A if name.startswith("fcc") else BCC_A
    frac = np.array(frac, dtype=float)
    results = [graph_edges(frac, lattice, a, backend=b) for b in ("torch", "vesin")]
    assert list(results[0]) == list(results[1])
    assert all(d < a for d in results[0].values())


# ---------------------------------------------------------------------- max_neighbors
def _fcc_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conventional fcc Cu in a rotated frame: equal distances differ by rounding noise."""
    lattice, frac = CELLS["fcc_conventional"]
    lattice = torch.tensor(lattice, dtype=F64) @ random_rotation(3)
    return torch.tensor(frac, dtype=F64), lattice[None], torch.tensor([4])


@pytest.mark.parametrize("backend", ["torch", "vesin"])
def test_max_neighbors_keeps_the_nearest_and_breaks_ties_by_source_then_image(backend):
    frac, lattice, counts = _fcc_batch()
    full = radius_graph(frac, lattice, counts, 4.0, backend=backend)  # 12 at 2.55 + 6 at 3.61
    idx = torch.zeros(4, dtype=torch.long)
    length = edge_lengths(frac, lattice, idx, full)
    nearest = radius_graph(frac, lattice, counts, 4.0, max_neighbors=12, backend=backend)
    assert nearest.num_edges == 48
    np.testing.assert_allclose(edge_lengths(frac, lattice, idx, nearest), FCC_A / math.sqrt(2))
    assert len(set(length.tolist())) > 2  # the ties are not exact: ranking must round
    # 14: the 12 first neighbours plus the two second neighbours first in (source, image).
    got = radius_graph(frac, lattice, counts, 4.0, max_neighbors=14, backend=backend)
    expected = []
    for i in range(4):
        mine = [(round(d, 6), r) for r, d in zip(rows(full), length.tolist(), strict=True)
                if r[0] == i]
        expected += sorted(r for _, r in sorted(mine, key=lambda x: (x[0], x[1][1:]))[:14])
    assert rows(got) == expected
    assert_same_graph(got, radius_graph(frac, lattice, counts, 4.0, max_neighbors=14,
                                        backend=backend))  # deterministic
    other = "vesin" if backend == "torch" else "torch"
    assert_same_graph(got, radius_graph(frac, lattice, counts, 4.0, max_neighbors=14,
                                        backend=other))


def test_max_neighbors_on_real_structures_keeps_the_k_shortest(batch):
    k = 10
    full = batch_graph(batch, 6.0)
    got = batch_graph(batch, 6.0, max_neighbors=k)
    length = edge_lengths(batch.frac_coords, batch.lattice, batch.crystal_idx, full)
    got_length = edge_lengths(batch.frac_coords, batch.lattice, batch.crystal_idx, got)
    target, got_target = full.edge_index[1], got.edge_index[1]
    for i in range(len(batch.frac_coords)):
        expected = length[target == i].sort().values[:k]
        torch.testing.assert_close(got_length[got_target == i].sort().values, expected)
    got_rows = rows(got)
    assert got_rows == sorted(got_rows) and set(map(tuple, got_rows)) <= set(map(tuple, rows(full)))


# ---------------------------------------------------------------------- gradients, edge cases
def test_edge_lengths_gradcheck_in_coordinates_and_lattice(structures):
    s = structures[13]  # mp-1223095: 19 atoms, 13-degree cell angle
    frac = torch.tensor(s.frac_coords[:6], dtype=F64, requires_grad=True)
    lattice = torch.tensor(s.lattice.matrix, dtype=F64)[None].requires_grad_(True)
    idx = torch.zeros(6, dtype=torch.long)
    g = radius_graph(frac, lattice, torch.tensor([6]), 4.0)
    assert g.num_edges > 10 and not g.edge_index.requires_grad

    def lengths(f, lat):
        return edge_lengths(f, lat, idx, g)

    assert torch.autograd.gradcheck(lengths, (frac, lattice))
    assert torch.autograd.gradcheck(lambda f, lat: edge_vectors(f, lat, idx, g), (frac, lattice))


@pytest.mark.parametrize("backend", ["torch", "vesin", "auto"])
def test_no_edges_below_the_shortest_distance(batch, backend):
    g = batch_graph(batch, 0.1, backend=backend)
    assert g.edge_index.shape == (2, 0) and g.edge_image.shape == (0, 3)
    assert g.edge_index.dtype == g.edge_image.dtype == torch.long
    assert batch_graph(batch, 0.1, backend=backend, max_neighbors=4).num_edges == 0
    assert edge_lengths(batch.frac_coords, batch.lattice, batch.crystal_idx, g).shape == (0,)


def test_float32_input_gives_the_float64_graph(batch):
    g32 = batch_graph(batch.to("cpu", dtype=torch.float32), 5.0)
    g64 = batch_graph(batch, 5.0)
    assert g32.num_edges == g64.num_edges and g32.edge_index.device == batch.device
    assert rows(g32) == rows(g64)  # no pair of these structures lies within 1e-6 of 5 Å


def test_crystal_batch_graph(batch):
    g = batch.graph(5.0)
    assert_same_graph(g, batch_graph(batch, 5.0))
    assert_same_graph(batch.graph(5.0, backend="vesin"), g)
    assert torch.equal(crystal_index(batch.num_atoms), batch.crystal_idx)
    lengths = edge_lengths(batch.frac_coords, batch.lattice, batch.crystal_idx, g)
    assert (lengths < 5.0).all() and (lengths > 0.5).all()
    capped = batch.graph(5.0, max_neighbors=6)
    assert torch.bincount(capped.edge_index[1]).max() == 6


def test_bad_arguments_are_rejected(batch):
    with pytest.raises(ValueError, match="cutoff"):
        batch.graph(0.0)
    with pytest.raises(ValueError, match="backend"):
        batch.graph(5.0, backend="cuda-magic")
    with pytest.raises(ValueError, match="max_neighbors"):
        batch.graph(5.0, max_neighbors=0)
