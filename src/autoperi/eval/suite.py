"""The benchmark suite: every metric per structure, then the aggregate, in one call.

`evaluate(samples, reference, train)` returns a `Report`: a per-structure table (why did
this crystal fail?), the same description of the reference set, the aggregate numbers
(versioned, with every tolerance used) and the raw distributions the plots are made of.
`eval.report.write_report` writes it to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from autoperi import __version__
from autoperi.eval.distribution import (
    COV_PRESETS,
    CRYSTALNN_PRESET,
    KL_EPSILON,
    SYMPREC,
    CoverageCutoffs,
    compare,
    composition_fingerprints,
    coverage,
    crystalnn_fingerprints,
    element_frequencies,
    space_groups,
)
from autoperi.eval.energy import Potential, default_potential
from autoperi.eval.explorer import explorer_data
from autoperi.eval.match import CDVAE, MatcherSettings, csp_rms, csp_summary
from autoperi.eval.novelty import (
    RDF_GRID,
    RDF_SIGMA,
    fingerprints,
    first_matches,
    novelty_scores,
)
from autoperi.eval.stability import finite_mean, stability_table
from autoperi.eval.targets import evaluate_targets, reference_values
from autoperi.eval.validity import (
    BVR_TOLERANCE,
    MIN_DISTANCE,
    MIN_VOLUME,
    _usable,
    bond_validation_rate,
    compositional_validity,
    nearest_neighbours,
    structural_validity,
)

SUITE_VERSION = "1.0"
TASKS = ("dng", "csp")
SUN_NOTE = ("S.U.N. (stable, unique, novel) needs per-structure stability: evaluate with "
            "mlip='chgnet' (CLI --mlip chgnet [--relax]) or pass stability=flags")


@dataclass
class Report:
    """Result of `evaluate`.

    per_structure: one row per sample (validity flags, distances, BVR, unique/novel,
    scores, space group, ...); reference: the same description of the reference set;
    aggregate: the headline numbers plus suite version, seed and all tolerances;
    distributions: raw per-set data behind the plots (bond lengths, element frequencies).
    """

    per_structure: pd.DataFrame
    reference: pd.DataFrame
    aggregate: dict
    distributions: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A few readable lines of the headline numbers."""
        a = self.aggregate
        lines = [f"{a['counts']['samples']} samples vs {a['counts']['reference']} references "
                 f"(suite {a['suite_version']}, task {a['task']})",
                 f"validity: structural {_pct(a['structural_validity'])}, compositional "
                 f"{_pct(a['compositional_validity'])}, both {_pct(a['validity'])}; "
                 f"BVR {_pct(a['bvr'])} (reference {_pct(a['bvr_reference'])})",
                 f"uniqueness {_pct(a['uniqueness'])}, novelty {_pct(a['novelty'])} "
                 f"(vs {a['counts']['novelty_against']}), V.U.N. {_pct(a['valid_unique_novel'])}",
                 f"COV-R {_pct(a['cov_recall'])}, COV-P {_pct(a['cov_precision'])}; "
                 f"W1 density {a['wdist_density']:.4g} g/cm3, #elements "
                 f"{a['wdist_num_elements']:.4g}, bond length {a['wdist_bond_length']:.4g} Å"]
        if a.get("energy"):
            e = a["energy"]
            lines.append(f"{e['potential']}{' (relaxed)' if e['relaxed'] else ''}: stable "
                         f"{_pct(e['stable'])} (E_hull <= 0), metastable {_pct(e['metastable'])}"
                         f" (<= 0.1 eV/atom); S.U.N. {_pct(a['sun'])} (<= 0.1), "
                         f"{_pct(a.get('sun_strict'))} (<= 0)")
        for name, t in (a.get("targets") or {}).items():
            lines.append(f"target {name} in [{t['low']:g}, {t['high']:g}]: hit rate "
                         f"{_pct(t['hit_rate'])} (independent predictor), MAE {t['mae']:.3g}, "
                         f"recall@100 {_pct(t['recall@100'])}")
        if a.get("csp"):
            lines.append(f"CSP match rate {_pct(a['csp']['match_rate'])}, "
                         f"RMSE {a['csp']['rmse']:.4g} (k = {a['csp']['samples_per_reference']})")
        return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def evaluate(samples: Sequence[Structure], reference: Sequence[Structure],
             train: Sequence[Structure] | None = None, task: str = "dng",
             matcher: MatcherSettings = CDVAE, seed: int = 0, *,
             cov: str | CoverageCutoffs = "mp-20", with_fingerprints: bool = True,
             max_fingerprint_reference: int | None = None, workers: int = 1,
             progress: bool = True, unreadable: int = 0,
             stability: Sequence[bool] | None = None, cache_dir=None,
             mlip: str | Potential | None = None, relax: bool = False,
             hull_reference: Sequence[Structure] | None = None,
             targets: dict | None = None, predictors: dict | None = None,
             reference_properties: dict | None = None, explorer: bool = True,
             phonon_checks: int = 0) -> Report:
    """Evaluate generated structures against a reference set (and the training set).

    task "dng" (de novo generation) or "csp" (structure prediction: samples[i] predicts
    reference[i], or, for k samples per input, samples carry properties input_index and
    sample_index as made by `autoperi.generate.predict_structures`).
    Novelty is measured against `train` when given, else against `reference`.
    cov: a COV_PRESETS name or CoverageCutoffs. with_fingerprints=False skips the slow
    CrystalNN fingerprints (no COV). max_fingerprint_reference: fingerprint at most this
    many reference structures (a random subset drawn with `seed`). unreadable: samples that
    could not even be read; they count as invalid in the validity shares. stability:
    per-sample flags (e.g. E_hull below a threshold) for S.U.N.; None leaves it empty.
    cache_dir: reuse CrystalNN fingerprints (and potential energies of the hull) across runs.
    mlip: "chgnet" or a `Potential`: energies per atom, energy above the hull of
    `hull_reference` (default: train, else reference) with elemental corners, and (with
    `relax`) relaxation energy and RMSD per structure (and with `phonon_checks` = n,
    phonons of the first n converged relaxed structures); S.U.N. then counts structures within
    0.1 eV/atom of the hull (and `sun_strict` those at or below it) unless `stability` is
    given. targets {name: (low, high)} with `predictors` {name: PropertyPredictor}: hit
    rates, MAE, Recall@100 and rediscovery (`eval.targets`); `reference_properties` {name:
    [R] values} are the reference's true values (default: read from its properties).
    explorer: compute the 3-D Property Explorer map (`eval.explorer`), coloured by the first
    target's property (samples: independent prediction, reference: true value), else by
    density.
    """
    same = samples is reference
    samples = _checked(samples, "samples")
    reference = samples if same else _checked(reference, "reference")
    train = None if train is None else _checked(train, "train")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    cutoffs = _cutoffs(cov)
    if stability is not None and len(stability) != len(samples):
        raise ValueError(f"{len(stability)} stability flags for {len(samples)} samples")
    if unreadable < 0:
        raise ValueError(f"unreadable must be >= 0, got {unreadable}")

    frame, neighbours = _describe(samples, progress)
    ref_frame, ref_neighbours = ((frame.copy(), neighbours) if reference is samples
                                 else _describe(reference, progress))
    frame["struct_valid"] = structural_validity(samples)
    frame["comp_valid"] = compositional_validity(samples)
    frame["valid"] = frame["struct_valid"] & frame["comp_valid"]
    frame["bvr"] = bond_validation_rate(samples, neighbours=neighbours)
    ref_frame["bvr"] = bond_validation_rate(reference, neighbours=ref_neighbours)

    novelty_set = train if train is not None else reference
    duplicate = first_matches(samples, None, matcher, workers, progress)
    frame["unique"] = duplicate == np.arange(len(samples))
    frame["duplicate_of"] = np.where(frame["unique"], -1, duplicate)
    hit = first_matches(samples, novelty_set, matcher, workers, progress)
    frame["novel"] = hit < 0
    frame["known_match"] = hit  # index in train (or reference) of the first match, -1: none
    frame["novelty_score"] = novelty_scores(fingerprints(samples), fingerprints(novelty_set))
    energy = None
    if mlip is not None:
        hull_set = hull_reference if hull_reference is not None else novelty_set
        table, energy = stability_table(samples, hull_set, _potential(mlip), relax,
                                        cache_dir, progress, phonon_checks)
        frame = frame.join(table.rename(columns={"stable": "on_hull"}))
        if stability is None:
            stability = table["metastable"].to_numpy()
            frame["sun_strict"] = (table["stable"].to_numpy() & frame["unique"].to_numpy()
                                   & frame["novel"].to_numpy())
    if stability is not None:
        frame["sun_stable"] = np.asarray(stability, dtype=bool)
    target_summary = None
    if targets:
        target_frame, target_summary = evaluate_targets(
            samples, reference, targets, predictors or {}, matcher, reference_properties,
            workers, progress, unreadable=unreadable)
        frame = frame.join(target_frame)

    valid = frame["struct_valid"].to_numpy()
    cov_flags = _coverage(samples, reference, valid, cutoffs, with_fingerprints,
                          max_fingerprint_reference, seed, workers, progress, cache_dir)
    if cov_flags is not None:
        covered, recalled, rows = cov_flags
        frame["cov_covered"] = covered
        ref_frame["cov_recalled"] = pd.Series(pd.NA, index=ref_frame.index, dtype="boolean")
        ref_frame.loc[rows, "cov_recalled"] = recalled  # NA: not in the fingerprinted subset

    data_s = _set_data(samples, frame, neighbours, valid)
    data_r = _set_data(reference, ref_frame, ref_neighbours, np.ones(len(reference), bool))
    csp = _csp(samples, reference, matcher, frame) if task == "csp" else None

    aggregate = _aggregate(frame, ref_frame, task, seed, matcher, cov, cutoffs, unreadable,
                           len(reference), None if train is None else len(train), cov_flags,
                           with_fingerprints, max_fingerprint_reference)
    aggregate.update(compare(data_s, data_r))
    aggregate["csp"] = csp
    aggregate["energy"] = energy
    if "sun_strict" in frame:
        total = len(frame) + unreadable
        aggregate["sun_strict"] = float(frame["sun_strict"].sum() / total)
        aggregate["sun_covered"] = float((frame["sun_stable"] & frame["hull_covered"]
                                          & frame["unique"] & frame["novel"]).sum() / total)
    aggregate["targets"] = target_summary
    distributions = {key: {"samples": data_s[key], "reference": data_r[key]}
                     for key in ("bond_length", "element_frequency")}
    for name in targets or {}:
        distributions[f"property:{name}"] = {
            "samples": frame[f"{name}_predicted"].to_numpy(),
            "reference": reference_values(reference, name, reference_properties)}
    if explorer:
        distributions["explorer"] = _explorer(samples, reference, frame, ref_frame, targets,
                                              distributions)
    if "e_above_hull" in frame:
        distributions["e_above_hull"] = frame["e_above_hull"].to_numpy()
    return Report(frame, ref_frame, aggregate, distributions)


# ---------------------------------------------------------------------- pieces
MLIPS = ("chgnet",)


def _potential(mlip) -> Potential:
    if isinstance(mlip, Potential):
        return mlip
    if mlip != "chgnet":
        raise ValueError(f"unknown potential {mlip!r}; use one of {MLIPS} or pass a Potential")
    return default_potential()

def _checked(structures, name: str) -> list[Structure]:
    structures = list(structures)
    if not structures:
        raise ValueError(f"{name}: no structures to evaluate")
    for k, s in enumerate(structures):
        if not isinstance(s, Structure):
            raise ValueError(f"{name}[{k}] is a {type(s).__name__}, not a pymatgen Structure")
        if not s.is_ordered:
            raise ValueError(f"{name}[{k}] ({s.formula}) is disordered; order it first")
    return structures


def _cutoffs(cov) -> CoverageCutoffs:
    if isinstance(cov, CoverageCutoffs):
        return cov
    if cov not in COV_PRESETS:
        raise ValueError(f"unknown COV preset {cov!r}; use one of {sorted(COV_PRESETS)}")
    return COV_PRESETS[cov]


def _describe(structures: list[Structure], progress: bool) -> tuple[pd.DataFrame, list]:
    """Formula, size, density, reduced lattice, space group, nearest-neighbour distances."""
    rows = []
    for s in tqdm(structures, desc="describing", leave=False,
                  disable=not progress or len(structures) < 500):
        row = {"formula": s.composition.reduced_formula, "num_atoms": len(s),
               "num_elements": len(s.composition.elements)}
        if _usable(s):
            lattice = s.lattice.get_niggli_reduced_lattice()
            row.update(density=float(s.density), volume_per_atom=s.volume / len(s),
                       **dict(zip("abc", lattice.abc, strict=True)),
                       **dict(zip(("alpha", "beta", "gamma"), lattice.angles, strict=True)))
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("density", "volume_per_atom", "a", "b", "c", "alpha", "beta", "gamma"):
        if column not in frame:
            frame[column] = np.nan
    neighbours = nearest_neighbours(structures)
    frame["min_distance"] = [float(np.min(d)) if len(d) else np.nan for d, _ in neighbours]
    frame["space_group"] = space_groups(structures, SYMPREC, progress)
    return frame, neighbours


def _coverage(samples, reference, valid, cutoffs, enabled, max_reference, seed, workers,
              progress, cache_dir):
    """(covered [S], recalled [R'], reference rows R') or None when fingerprints are off.
    Fingerprints are computed once per structure object (samples may be the reference)."""
    if not enabled:
        return None
    rows = np.arange(len(reference))
    if max_reference is not None and len(reference) > max_reference:
        rows = np.sort(np.random.default_rng(seed).choice(len(reference), max_reference,
                                                          replace=False))
    chosen = [reference[k] for k in rows]
    ref_struct = crystalnn_fingerprints(chosen, workers, progress, cache_dir)
    known = {id(s): k for k, s in enumerate(chosen)}
    sample_struct = np.full((len(samples), ref_struct.shape[1]), np.nan)
    todo = []
    for k, s in enumerate(samples):
        if valid[k] and id(s) in known:
            sample_struct[k] = ref_struct[known[id(s)]]
        elif valid[k]:
            todo.append(k)
    if todo:
        sample_struct[todo] = crystalnn_fingerprints([samples[k] for k in todo], workers,
                                                     progress)
    covered, recalled = coverage(sample_struct, composition_fingerprints(samples), ref_struct,
                                 composition_fingerprints(chosen), cutoffs)
    return covered, recalled, rows


def _set_data(structures, frame, neighbours, keep) -> dict:
    """Per-set inputs of distribution.compare, restricted to rows in `keep`."""
    kept = [s for s, k in zip(structures, keep, strict=True) if k]
    bonds = [d for (d, _), k in zip(neighbours, keep, strict=True) if k and len(d)]
    bonds = np.concatenate(bonds) if bonds else np.zeros(0)
    return {"density": frame["density"].to_numpy()[keep],
            "num_elements": frame["num_elements"].to_numpy()[keep],
            "bond_length": bonds[np.isfinite(bonds)],
            "element_frequency": element_frequencies(kept),
            "space_group": frame["space_group"].to_numpy()[keep]}


def _csp(samples, reference, matcher, frame) -> dict:
    """CSP match rate and RMSE; adds input_index, sample_index, rms and matched to frame."""
    props = [s.properties or {} for s in samples]
    if all("input_index" in p for p in props):
        try:
            inputs = np.array([int(p["input_index"]) for p in props])
            slots = np.array([int(p.get("sample_index", 0)) for p in props])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"csp: input_index/sample_index must be integers ({exc})") from None
        bad = np.nonzero((inputs < 0) | (inputs >= len(reference)))[0]
        if len(bad):
            raise ValueError(f"csp: sample {bad[0]} has input_index {inputs[bad[0]]}, but there "
                             f"are {len(reference)} references")
    elif len(samples) == len(reference):
        inputs, slots = np.arange(len(samples)), np.zeros(len(samples), dtype=int)
    else:
        raise ValueError(f"csp: {len(samples)} samples for {len(reference)} references; give "
                         "one prediction per reference in input order, or samples with "
                         "input_index / sample_index properties (autoperi csp)")
    rms = csp_rms(samples, [reference[k] for k in inputs], matcher)
    # column of each sample in its input's row: rank of its sample_index among that input's
    column = np.zeros(len(samples), dtype=int)
    for k in np.unique(inputs):
        members = np.nonzero(inputs == k)[0]
        column[members[np.argsort(slots[members], kind="stable")]] = np.arange(len(members))
    table = np.full((len(reference), column.max() + 1), np.nan)
    table[inputs, column] = rms
    frame["input_index"], frame["sample_index"] = inputs, slots
    frame["rms"], frame["matched"] = rms, ~np.isnan(rms)
    summary = csp_summary(table)
    summary["references_without_samples"] = int(len(reference) - len(np.unique(inputs)))
    return summary


def _explorer(samples, reference, frame, ref_frame, targets, distributions) -> dict:
    if targets:
        name = next(iter(targets))
        values = distributions[f"property:{name}"]
        truth = values["reference"]
        if truth is None:
            truth = np.full(len(reference), np.nan)
        return explorer_data(samples, reference, values["samples"], truth,
                             f"{name} (samples: independent predictor)")
    return explorer_data(samples, reference, frame["density"], ref_frame["density"],
                         "density (g/cm³)")


def _aggregate(frame, ref_frame, task, seed, matcher, cov, cutoffs, unreadable, n_reference,
               n_train, cov_flags, with_fingerprints, max_reference) -> dict:
    n = len(frame)
    total = n + unreadable  # unreadable samples are invalid
    unique, novel, valid = (frame[c].to_numpy() for c in ("unique", "novel", "valid"))
    stable = frame["sun_stable"].to_numpy() if "sun_stable" in frame else None
    return {
        "suite_version": SUITE_VERSION,
        "autoperi_version": __version__,
        "task": task,
        "seed": seed,
        "tolerances": {
            "min_distance": MIN_DISTANCE, "min_volume": MIN_VOLUME,
            "bvr_tolerance": BVR_TOLERANCE,
            "matcher": {**asdict(matcher), "primitive_cell": True, "scale": True,
                        "attempt_supercell": False},
            "symprec": SYMPREC,
            "coverage": {"preset": cov if isinstance(cov, str) else None, **asdict(cutoffs)},
            "crystalnn_preset": CRYSTALNN_PRESET if with_fingerprints else None,
            "max_fingerprint_reference": max_reference,
            "kl_epsilon": KL_EPSILON,
            "rdf_grid": [float(RDF_GRID[0]), float(RDF_GRID[-1]), len(RDF_GRID)],
            "rdf_sigma": RDF_SIGMA,
        },
        "counts": {"samples": total, "evaluated": n, "unreadable": unreadable,
                   "reference": n_reference, "train": n_train,
                   "novelty_against": "reference" if n_train is None else "train"},
        "structural_validity": float(frame["struct_valid"].sum() / total),
        "compositional_validity": float(frame["comp_valid"].sum() / total),
        "validity": float(valid.sum() / total),
        "bvr": finite_mean(frame["bvr"]),
        "bvr_reference": finite_mean(ref_frame["bvr"]),
        "uniqueness": float(unique.mean()),
        "novelty": float(novel.mean()),
        "unique_novel": float((unique & novel).mean()),
        "valid_unique_novel": float((valid & unique & novel).sum() / total),
        "novelty_score": finite_mean(frame["novelty_score"]),
        "stability": None if stable is None else float(stable.sum() / total),
        "sun": None if stable is None else float((stable & unique & novel).sum() / total),
        "sun_note": None if stable is not None else SUN_NOTE,
        "cov_recall": None if cov_flags is None else float(cov_flags[1].mean()),
        "cov_precision": None if cov_flags is None else float(cov_flags[0].mean()),
    }
