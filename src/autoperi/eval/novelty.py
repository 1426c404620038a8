"""Uniqueness and novelty of generated crystals (StructureMatcher), and a fingerprint
novelty score.

Matching decisions are exactly those of pymatgen's StructureMatcher with the settings of
`eval.match` (default comparator, primitive_cell=True, scale=True, attempt_supercell=False,
allow_subset=False), only made fast:

1. **Bucketing by reduced formula.** `fit` returns False at once when the two compositions
   differ (comparator hash: the fractional composition). Structures here are ordered, so
   equal fractional compositions have equal reduced formulas: two structures in different
   formula buckets can never match. A query whose formula has no partner is decided
   without any reduction or matcher call.
2. **Sub-bucketing by the number of sites of the reduced cell.** `fit` Niggli-reduces and
   takes the primitive cell of both structures, then (no supercells, no subsets) returns
   no match when the two reduced cells have different numbers of sites. Supercells of one
   crystal reduce to the same primitive cell, so they share this key.
3. **Reduction once per structure**, not once per pair: each structure is reduced exactly
   as `fit` would (``Structure.from_sites(s).get_reduced_structure("niggli")
   .get_primitive_structure()``) and pairs are fitted with
   ``fit(..., skip_structure_reduction=True)``.

Volume, density or lattice parameters are *not* used as keys: with scale=True the matcher
rescales both cells to a common volume, so a uniformly expanded copy still matches.
The oracle `naive_first_matches` runs plain `fit` over all pairs; tests and
bench/evaluate.py check that the decisions are identical.
"""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from pymatgen.core import Lattice, Structure
from tqdm.auto import tqdm

from autoperi.eval.match import CDVAE, MatcherSettings
from autoperi.eval.validity import _usable, periodic_edges

# Radial fingerprint grid, in units of the mean atomic spacing (V/N)^(1/3).
RDF_GRID = np.round(np.arange(0.5, 2.5 + 1e-9, 0.05), 4)
RDF_SIGMA = 0.05
MAX_Z = 103


# ====================================================================== StructureMatcher
def formula_key(structure: Structure) -> str:
    """First bucket key: the reduced formula (see the module docstring)."""
    return structure.composition.reduced_formula


def reduce_for_matching(structure: Structure) -> Structure | None:
    """The cell StructureMatcher.fit compares (Niggli-reduced primitive cell); None if the
    structure cannot be reduced (then fit raises, which counts as no match)."""
    try:
        reduced = Structure.from_sites(structure).get_reduced_structure("niggli")
        return reduced.get_primitive_structure()
    except Exception:  # noqa: BLE001 - degenerate structures simply never match
        return None


def _fit(matcher, a: Structure | None, b: Structure | None, reduced: bool) -> bool:
    if a is None or b is None:
        return False
    try:
        return bool(matcher.fit(a, b, skip_structure_reduction=reduced))
    except Exception:  # noqa: BLE001 - as csp_rms: a failing comparison is no match
        return False


def _match_bucket(task: tuple) -> list[int]:
    """One formula bucket. task = (queries, candidates or None, settings); returns, per query,
    the local index of its first matching candidate (-1 if none) or, within one set, of the
    representative it matches (its own index if it is a new representative)."""
    queries, candidates, settings = task
    matcher = settings.matcher()
    rq = [reduce_for_matching(s) for s in queries]
    size = [-1 if r is None else len(r) for r in rq]
    out: list[int] = []
    if candidates is None:
        representatives: list[int] = []
        for i, r in enumerate(rq):
            hit = next((j for j in representatives
                        if size[j] == size[i] and _fit(matcher, rq[j], r, True)), i)
            if hit == i:
                representatives.append(i)
            out.append(hit)
        return out
    rc = [reduce_for_matching(s) for s in candidates]
    by_size = defaultdict(list)  # second key: sites of the reduced cell, in candidate order
    for j, r in enumerate(rc):
        if r is not None:
            by_size[len(r)].append(j)
    for i, r in enumerate(rq):
        out.append(next((j for j in by_size.get(size[i], ()) if _fit(matcher, rc[j], r, True)),
                        -1))
    return out


def first_matches(queries: Sequence[Structure], candidates: Sequence[Structure] | None = None,
                  settings: MatcherSettings = CDVAE, workers: int = 1,
                  progress: bool = True) -> np.ndarray:
    """Index of a matching structure for each query, [Q] int.

    With `candidates`: the first candidate (in candidate order) that matches the query,
    ``fit(candidate, query)``, or -1. Without: greedy classes in input order — the first
    earlier *representative* that matches, ``fit(representative, query)``, or the query's
    own index, which makes it a new representative.
    `workers` > 1 spreads the formula buckets over processes.
    """
    groups_q: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(queries):
        groups_q[formula_key(s)].append(i)
    out = np.arange(len(queries)) if candidates is None else np.full(len(queries), -1)
    groups_c: dict[str, list[int]] = defaultdict(list)
    if candidates is not None:
        wanted = set(groups_q)
        for j, s in enumerate(candidates):
            key = formula_key(s)
            if key in wanted:
                groups_c[key].append(j)
    jobs = []  # (query indices, candidate indices or None)
    for key, members in groups_q.items():
        if candidates is None and len(members) > 1:
            jobs.append((members, None))
        elif candidates is not None and groups_c.get(key):
            jobs.append((members, groups_c[key]))
    jobs.sort(key=lambda job: -len(job[0]) * len(job[1] or job[0]))  # largest first
    tasks = (([queries[i] for i in q], None if c is None else [candidates[j] for j in c],
              settings) for q, c in jobs)
    results = parallel_map(_match_bucket, tasks, len(jobs), workers,
                           progress and len(jobs) >= 50, "matching")
    for (q, c), local in zip(jobs, results, strict=True):
        index = np.asarray(q if c is None else c)
        for i, hit in zip(q, local, strict=True):
            out[i] = -1 if hit < 0 else index[hit]
    return out


def parallel_map(fn, tasks, total: int, workers: int, progress: bool, desc: str) -> list:
    """[fn(task) for task in tasks] (`total` of them), in a spawned process pool when
    workers > 1 (scripts calling this must guard their entry with ``if __name__ ==
    "__main__"``), with a progress bar when `progress`."""
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    results = []
    if workers > 1 and total > 1:
        context = multiprocessing.get_context("spawn")  # torch and fork do not mix
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for r in pool.map(fn, tasks, chunksize=max(1, total // (8 * workers))):
                results.append(r)
                bar.update()
    else:
        for task in tasks:
            results.append(fn(task))
            bar.update()
    bar.close()
    return results


def uniqueness(structures: Sequence[Structure], settings: MatcherSettings = CDVAE,
               workers: int = 1, progress: bool = True) -> np.ndarray:
    """True for the first occurrence of each class of matching structures, [S] bool
    (classes formed greedily in input order, see `first_matches`): a planted duplicate of
    an earlier structure is False, everything else True."""
    return first_matches(structures, None, settings, workers, progress) == np.arange(
        len(structures))


def novelty(structures: Sequence[Structure], reference: Sequence[Structure],
            settings: MatcherSettings = CDVAE, workers: int = 1,
            progress: bool = True) -> np.ndarray:
    """True where a structure matches no structure of `reference` (e.g. the training set),
    [S] bool."""
    return first_matches(structures, reference, settings, workers, progress) < 0


def naive_first_matches(queries: Sequence[Structure],
                        candidates: Sequence[Structure] | None = None,
                        settings: MatcherSettings = CDVAE) -> np.ndarray:
    """The oracle for `first_matches`: plain ``StructureMatcher.fit`` on every pair in order,
    no keys and no pre-reduction. Quadratic; for tests and benchmarks only."""
    matcher = settings.matcher()
    out = np.full(len(queries), -1)
    representatives: list[int] = []
    for i, s in enumerate(queries):
        if candidates is None:
            out[i] = next((j for j in representatives if _fit(matcher, queries[j], s, False)), i)
            if out[i] == i:
                representatives.append(i)
        else:
            out[i] = next((j for j, c in enumerate(candidates) if _fit(matcher, c, s, False)),
                          -1)
    return out


def rewritten_copy(structure: Structure, seed: int = 0, perturb: float = 0.0) -> Structure:
    """The same crystal written differently: Cartesian frame rotated, origin shifted, atoms
    permuted and (optionally) displaced by `perturb` Å. Matching must see through all of
    it (used by the tests and bench/evaluate.py)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    q = q if np.linalg.det(q) > 0 else -q  # a proper rotation
    order = rng.permutation(len(structure))
    frac = (structure.frac_coords[order] + rng.uniform(size=3)) % 1.0
    copy = Structure(Lattice(structure.lattice.matrix @ q.T),
                     [structure.species[k] for k in order], frac)
    if perturb > 0:
        copy.perturb(perturb)
    return copy


# ====================================================================== fingerprint score
def element_fractions(structures: Sequence[Structure]) -> np.ndarray:
    """Composition vector [S, MAX_Z + 1]: share of the atoms that are element Z."""
    out = np.zeros((len(structures), MAX_Z + 1))
    for k, s in enumerate(structures):
        z = np.asarray(s.atomic_numbers)
        if len(z) and z.max() <= MAX_Z:
            np.add.at(out[k], z, 1.0 / len(z))
    return out


def radial_fingerprints(structures: Sequence[Structure]) -> np.ndarray:
    """Scale-free radial distribution fingerprint [S, K] (K = len(RDF_GRID)); NaN rows for
    unusable structures.

    Each structure is scaled to one Å^3 per atom (lengths in units of (V/N)^(1/3), as
    StructureMatcher's scale=True ignores volume), species are ignored, and
    g(r_k) = 1 / (4π r_k² N) · Σ_i Σ_j N(r_k; r_ij, RDF_SIGMA) over all atoms i of the cell and
    all neighbours j over periodic images, N the normal density. This is the smoothed radial
    distribution function (→ 1 at large r); it does not depend on the choice of cell,
    supercell, origin, orientation or atom order.
    """
    out = np.full((len(structures), len(RDF_GRID)), np.nan)
    usable = [k for k, s in enumerate(structures) if _usable(s)]
    cutoff = float(RDF_GRID[-1] + 4 * RDF_SIGMA)
    edges = periodic_edges([structures[k] for k in usable], cutoff, unit_volume=True)
    norm = 4 * np.pi * RDF_GRID**2 * np.sqrt(2 * np.pi) * RDF_SIGMA
    for k, (_, _, length) in zip(usable, edges, strict=True):
        density = np.exp(-0.5 * ((length[:, None] - RDF_GRID[None]) / RDF_SIGMA) ** 2).sum(0)
        out[k] = density / (norm * len(structures[k]))
    return out


def tanimoto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Continuous Tanimoto similarity of non-negative vectors, [A, B]:
    T(x, y) = x·y / (|x|² + |y|² − x·y), 1 for equal vectors, 0 for disjoint support
    (0 when both are zero)."""
    dot = a @ b.T
    denominator = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - dot
    return np.divide(dot, denominator, out=np.zeros_like(dot), where=denominator > 0)


def fingerprints(structures: Sequence[Structure]) -> tuple[np.ndarray, np.ndarray]:
    """(element_fractions [S, 104], radial_fingerprints [S, K]) for `similarity`."""
    return element_fractions(structures), radial_fingerprints(structures)


def similarity(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Fingerprint similarity of crystals, [A, B] in [0, 1]:
    S = ½ T(c_a, c_b) + ½ T(g_a, g_b), with c the element-fraction vector, g the radial
    fingerprint (`radial_fingerprints`) and T the continuous Tanimoto coefficient. S = 1
    when the reduced compositions and the scale-free radial distributions are equal (e.g.
    a supercell or an isotropically expanded copy). NaN where a fingerprint is NaN."""
    out = 0.5 * tanimoto(a[0], b[0]) + 0.5 * tanimoto(np.nan_to_num(a[1], nan=0.0),
                                                    np.nan_to_num(b[1], nan=0.0))
    out[np.isnan(a[1]).any(1)[:, None] | np.isnan(b[1]).any(1)[None, :]] = np.nan
    return out


def novelty_scores(structures: Sequence[Structure] | tuple,
                   train: Sequence[Structure] | tuple, chunk: int = 512) -> np.ndarray:
    """Fingerprint novelty score per structure, [S] in [0, 1]: 1 − max over the training
    set of `similarity`; 0 for a copy (up to cell choice and scale) of a training crystal.
    NaN for unusable structures. Either argument may be precomputed `fingerprints`."""
    fa = structures if isinstance(structures, tuple) else fingerprints(structures)
    fb = train if isinstance(train, tuple) else fingerprints(train)
    keep = ~np.isnan(fb[1][:, 0])
    fb = (fb[0][keep], fb[1][keep])
    out = np.full(len(fa[0]), np.nan)
    if not keep.any():
        return out
    for lo in range(0, len(out), chunk):
        part = (fa[0][lo:lo + chunk], fa[1][lo:lo + chunk])
        out[lo:lo + chunk] = 1.0 - similarity(part, fb).max(axis=1)
    return out
