"""How close the samples are to the reference distribution: Wasserstein distances, element
frequencies, space groups and COV-R / COV-P coverage with CrystalNN and Magpie fingerprints.

Per-structure quantities are pure functions returning arrays; `compare` turns two sets of
them into the distribution metrics.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from autoperi.atomic import atomic_path
from autoperi.data.checks import exact_key, is_finite
from autoperi.data.features import composition_features
from autoperi.eval.novelty import MAX_Z, element_fractions, parallel_map

log = logging.getLogger(__name__)

SYMPREC = 0.1  # Å, spglib tolerance for space groups
KL_EPSILON = 1e-6  # additive smoothing of element frequencies before the KL divergence
CRYSTALNN_PRESET = "ops"


@dataclass(frozen=True)
class CoverageCutoffs:
    """COV thresholds (CDVAE): Euclidean distance of CrystalNN structure fingerprints and of
    standardized Magpie composition fingerprints."""

    structure: float
    composition: float


COV_PRESETS = {
    "mp-20": CoverageCutoffs(0.4, 10.0),
    "mpts-52": CoverageCutoffs(0.4, 10.0),  # not in CDVAE; Materials Project like mp-20
    "carbon-24": CoverageCutoffs(0.2, 4.0),
    "perov-5": CoverageCutoffs(0.2, 4.0),
}


# ====================================================================== per structure
def densities(structures: Sequence[Structure]) -> np.ndarray:
    """Mass density in g/cm^3, [S]."""
    return np.array([float(s.density) for s in structures])


def num_elements(structures: Sequence[Structure]) -> np.ndarray:
    """Number of distinct elements, [S]."""
    return np.array([len(s.composition.elements) for s in structures])


def space_groups(structures: Sequence[Structure], symprec: float = SYMPREC,
                 progress: bool = True) -> np.ndarray:
    """International space-group number (spglib via SpacegroupAnalyzer), [S]; 0 where
    spglib finds none or the structure is not finite."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    out = np.zeros(len(structures), dtype=int)
    for k, s in enumerate(tqdm(structures, desc="space groups", leave=False,
                               disable=not progress or len(structures) < 500)):
        if not is_finite(s):
            continue  # 0; spglib would crash the process
        try:
            out[k] = SpacegroupAnalyzer(s, symprec=symprec).get_space_group_number()
        except Exception:  # noqa: BLE001 - spglib fails on degenerate cells: "unknown"
            out[k] = 0
    return out


def composition_fingerprints(structures: Sequence[Structure]) -> np.ndarray:
    """Magpie composition fingerprint [S, 5F] (mean, mean absolute deviation, min, max and
    range of each elemental property; `data.features.composition_features`)."""
    if not structures:
        return np.zeros((0, 0))
    z = torch.tensor(np.concatenate([s.atomic_numbers for s in structures]), dtype=torch.long)
    crystal = torch.repeat_interleave(torch.arange(len(structures)),
                                      torch.tensor([len(s) for s in structures]))
    return composition_features(z, crystal, len(structures)).double().numpy()


def _crystalnn_chunk(structures: list[Structure]) -> np.ndarray:
    from matminer.featurizers.site import CrystalNNFingerprint

    featurizer = CrystalNNFingerprint.from_preset(CRYSTALNN_PRESET)
    width = len(featurizer.feature_labels())
    out = np.full((len(structures), width), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, s in enumerate(structures):
            try:
                out[k] = np.mean([featurizer.featurize(s, i) for i in range(len(s))], axis=0)
            except Exception as exc:  # noqa: BLE001 - Voronoi fails on degenerate cells
                log.debug("CrystalNN failed on structure %d (%s): %s", k, s.formula, exc)
    return out


def crystalnn_fingerprints(structures: Sequence[Structure], workers: int = 1,
                           progress: bool = True, cache_dir: str | Path | None = None,
                           chunk: int = 16) -> np.ndarray:
    """Structure fingerprint [S, 61]: matminer's CrystalNNFingerprint ("ops" preset) of
    every site, averaged over the sites (as CDVAE). NaN rows where CrystalNN fails.

    Slow (~0.1-0.4 s per structure): `workers` spreads chunks over processes, and with
    `cache_dir` the result for this exact list of structures is stored and reused.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        matminer_version = version("matminer")
    except PackageNotFoundError:
        raise ImportError("CrystalNN fingerprints need matminer: pip install 'autoperi[eval]' "
                          "(or skip them: with_fingerprints=False / --no-fingerprints)") from None
    if not structures:
        return np.zeros((0, 61))
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{matminer_version}|{CRYSTALNN_PRESET}".encode())
        for s in structures:
            digest.update(repr(exact_key(s)).encode())
        path = Path(cache_dir) / f"crystalnn-{digest.hexdigest()[:24]}.npy"
        if path.exists():
            return np.load(path)
    parts = [list(structures[lo:lo + chunk]) for lo in range(0, len(structures), chunk)]
    results = parallel_map(_crystalnn_chunk, parts, len(parts), workers,
                           progress and len(parts) > 3, "CrystalNN fingerprints")
    out = np.concatenate(results)
    if path is not None:
        with atomic_path(path) as tmp:
            np.save(tmp, out)
    return out


# ====================================================================== coverage
def coverage(sample_structure_fp: np.ndarray, sample_composition_fp: np.ndarray,
             reference_structure_fp: np.ndarray, reference_composition_fp: np.ndarray,
             cutoffs: CoverageCutoffs) -> tuple[np.ndarray, np.ndarray]:
    """COV flags (CDVAE definition): (covered [S], recalled [R]).

    A sample is *covered* (counts for COV-P) when its nearest reference in structure
    fingerprint is within `cutoffs.structure` and its nearest reference in composition
    fingerprint within `cutoffs.composition`; a reference is *recalled* (COV-R) when the
    nearest sample satisfies the same two conditions. As in CDVAE, the two nearest
    neighbours are found independently. Distances are Euclidean; composition fingerprints
    are standardized with the reference set's mean and standard deviation per column
    (columns with zero spread are left unscaled). Rows with a NaN fingerprint are never
    covered nor recalled and never cover anything.
    """
    ok_s = ~(np.isnan(sample_structure_fp).any(1) | np.isnan(sample_composition_fp).any(1))
    ok_r = ~(np.isnan(reference_structure_fp).any(1)
             | np.isnan(reference_composition_fp).any(1))
    covered, recalled = np.zeros(len(ok_s), dtype=bool), np.zeros(len(ok_r), dtype=bool)
    if not ok_s.any() or not ok_r.any():
        return covered, recalled
    ref_comp = reference_composition_fp[ok_r]
    mean, std = ref_comp.mean(0), ref_comp.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    s_struct, r_struct = sample_structure_fp[ok_s], reference_structure_fp[ok_r]
    s_comp, r_comp = (sample_composition_fp[ok_s] - mean) / std, (ref_comp - mean) / std
    d_struct, d_comp = cdist(s_struct, r_struct), cdist(s_comp, r_comp)
    covered[ok_s] = (d_struct.min(1) <= cutoffs.structure) & (d_comp.min(1) <= cutoffs.composition)
    recalled[ok_r] = ((d_struct.min(0) <= cutoffs.structure)
                      & (d_comp.min(0) <= cutoffs.composition))
    return covered, recalled


# ====================================================================== set comparisons
def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein (earth mover's) distance of two samples of a scalar; finite values
    only; NaN if either side is empty."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    return float(wasserstein_distance(a, b))


def element_frequencies(structures: Sequence[Structure]) -> np.ndarray:
    """Share of all atoms of the set that are element Z, [MAX_Z + 1] (sums to 1)."""
    if not structures:
        return np.zeros(MAX_Z + 1)
    counts = element_fractions(structures) * np.array([len(s) for s in structures])[:, None]
    total = counts.sum()
    return counts.sum(0) / total if total else counts.sum(0)


def element_kl(reference: np.ndarray, samples: np.ndarray, epsilon: float = KL_EPSILON) -> float:
    """KL(reference ‖ samples) of element frequencies (`element_frequencies`) in nats, after
    adding `epsilon` to every element Z = 1..MAX_Z of both and renormalizing (an element
    the samples never use costs about p·ln(p/epsilon) instead of infinity)."""
    p = np.asarray(reference, dtype=float)[1:] + epsilon
    q = np.asarray(samples, dtype=float)[1:] + epsilon
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def space_group_shares(groups: np.ndarray) -> np.ndarray:
    """Share of each space group 1..230, [231] (index 0: undetermined)."""
    groups = np.asarray(groups, dtype=int)
    counts = np.bincount(groups, minlength=231).astype(float)
    return counts / max(len(groups), 1)


def compare(samples: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """Distribution metrics from per-structure arrays of the samples and of the reference.

    Both dicts hold "density" [S], "num_elements" [S], "bond_length" (all nearest-neighbour
    distances, pooled), "element_frequency" [MAX_Z + 1] and "space_group" [S].
    """
    sg_s, sg_r = space_group_shares(samples["space_group"]), space_group_shares(
        reference["space_group"])
    return {
        "wdist_density": wasserstein(samples["density"], reference["density"]),
        "wdist_num_elements": wasserstein(samples["num_elements"], reference["num_elements"]),
        "wdist_bond_length": wasserstein(samples["bond_length"], reference["bond_length"]),
        "kl_element_frequency": element_kl(reference["element_frequency"],
                                           samples["element_frequency"]),
        "space_group_tvd": float(0.5 * np.abs(sg_s - sg_r).sum()),
        "p1_share": float(sg_s[1]),
        "p1_share_reference": float(sg_r[1]),
        "space_groups_found": int((sg_s[1:] > 0).sum()),
        "space_groups_reference": int((sg_r[1:] > 0).sum()),
    }
