"""Write an evaluation `Report` to a folder: metrics.json, per_structure.csv, report.md and
PNG plots (samples vs reference). Every file is written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from pymatgen.core import Element

from autoperi.atomic import atomic_path
from autoperi.eval.suite import Report

PLOTS = {
    "bond_lengths.png": "nearest-neighbour bond lengths",
    "element_frequency.png": "element frequencies",
    "lattice.png": "reduced lattice lengths and angles",
    "density.png": "density",
    "space_groups.png": "space groups",
    "energy.png": "energy per atom and energy above the hull (samples)",
    "explorer.html": "Property Explorer (3-D PCA map, interactive)",
}
_COLORS = {"samples": "tab:orange", "reference": "tab:blue"}

# metric key, label, definition (shown in report.md)
_HEADLINE = [
    ("structural_validity", "Structural validity",
     "every interatomic distance (all images) >= {min_distance} Å, volume >= {min_volume} Å³"),
    ("compositional_validity", "Compositional validity",
     "SMACT: charge-neutral common oxidation states with Pauling electronegativity order "
     "(single elements and all-metal alloys valid)"),
    ("validity", "Validity", "structurally and compositionally valid"),
    ("bvr", "Bond Validation Rate",
     "mean share of atoms whose nearest-neighbour bond is within ±{bvr_pct} % of the sum of "
     "covalent radii"),
    ("bvr_reference", "BVR of the reference", "the same for the reference set"),
    ("uniqueness", "Uniqueness", "first member of each StructureMatcher class"),
    ("novelty", "Novelty", "matches no structure of the {novelty_against} set"),
    ("unique_novel", "Unique and novel", ""),
    ("valid_unique_novel", "Valid, unique and novel (V.U.N.)", ""),
    ("cov_recall", "COV-R", "reference structures recalled by a valid sample"),
    ("cov_precision", "COV-P", "samples within the cutoffs of a reference structure"),
    ("sun", "S.U.N.", "stable (E_hull <= 0.1 eV/atom, or given flags), unique and novel"),
    ("sun_strict", "S.U.N. at 0.0 eV/atom", "on or below the hull, unique and novel"),
    ("sun_covered", "S.U.N. in covered systems",
     "S.U.N. and the hull of its chemical system holds a reference compound"),
]
_DISTRIBUTION = [
    ("novelty_score", "Mean fingerprint novelty score", "1 − max similarity to {novelty_against}"),
    ("wdist_density", "W1 density (g/cm³)", "valid samples vs reference"),
    ("wdist_num_elements", "W1 number of elements", ""),
    ("wdist_bond_length", "W1 nearest-neighbour bond length (Å)", ""),
    ("kl_element_frequency", "KL element frequency (nats)", "KL(reference ‖ samples)"),
    ("space_group_tvd", "Space-group total variation", "½ Σ \\|p − q\\| over space groups"),
    ("p1_share", "Share of P1", "spglib, symprec {symprec} Å"),
    ("p1_share_reference", "Share of P1 in the reference", ""),
]
_ENERGY = [
    ("with_e_above_hull", "With an energy above the hull", ""),
    ("mean_energy_per_atom", "Mean energy (eV/atom)", "as generated"),
    ("median_e_above_hull", "Median E_hull (eV/atom)", "relaxed when relaxed"),
    ("stable", "Stable", "E_hull <= 0.0 eV/atom"),
    ("metastable", "Metastable", "E_hull <= 0.1 eV/atom"),
    ("hull_covered", "In a chemical system with reference compounds",
     "elsewhere the hull is the elemental corners only: E_hull is optimistic"),
    ("metastable_covered", "Metastable and in a covered system", ""),
    ("relaxation_energy_below_threshold", "Relaxation energy < 0.5 eV/atom",
     "E_unrelaxed − E_relaxed"),
    ("mean_relaxation_energy", "Mean relaxation energy (eV/atom)", ""),
    ("mean_relax_rmsd", "Mean relaxation RMSD (Å)", "periodic, rigid shift removed"),
    ("relax_converged", "Relaxations converged", "max generalized force < fmax"),
    ("phonons_checked", "Phonon checks", "finite displacements, relaxed structures"),
    ("dynamically_stable", "Dynamically stable", "no imaginary mode below −0.1 THz"),
]
_TARGET = [
    ("hit_rate", "Hit rate (independent predictor; unreadable samples count as misses)"),
    ("own_hit_rate", "Hit rate (generator's own head)"),
    ("mae", "MAE to the window"),
    ("mean_predicted", "Mean predicted value"),
    ("recall@100", "Recall@100 (hits among the top 100 by the own head)"),
    ("reference_in_window", "Reference in the window"),
]
_FRACTIONS = ({key for key, *_ in _HEADLINE} | {"p1_share", "p1_share_reference"}
              | {"with_e_above_hull", "stable", "metastable", "relax_converged", "hull_covered",
                 "metastable_covered", "sun_covered",
                 "relaxation_energy_below_threshold", "hit_rate", "dynamically_stable",
                 "own_hit_rate", "recall@100", "reference_in_window", "rediscovered"})


def write_report(report: Report, out: str | Path, plots: bool = True) -> Path:
    """Write metrics.json, per_structure.csv, report.md and (with `plots`) PNG files into
    the folder `out` (created if needed; other files in it are left alone)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "metrics.json", json.dumps(json_safe(report.aggregate), indent=1) + "\n")
    frame = report.per_structure.rename_axis("index")
    with atomic_path(out / "per_structure.csv") as tmp:
        frame.to_csv(tmp)
    written = _plots(report, out) if plots else []
    _write_text(out / "report.md", markdown(report, written))
    return out


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(value):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# ====================================================================== markdown
def _format(key: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if key in _FRACTIONS:
        return f"{100 * value:.1f} %"
    return f"{value:.4g}"


def markdown(report: Report, plots: list[str] = ()) -> str:
    """report.md: settings, headline and distribution tables, CSP, failures, plots."""
    a, t, frame = report.aggregate, report.aggregate["tolerances"], report.per_structure
    names = {"min_distance": t["min_distance"], "min_volume": t["min_volume"],
             "bvr_pct": f"{100 * t['bvr_tolerance']:g}", "symprec": t["symprec"],
             "novelty_against": a["counts"]["novelty_against"]}
    c = a["counts"]
    lines = ["# AutoPeri evaluation report", "",
             f"Suite {a['suite_version']} · autoperi {a['autoperi_version']} · task "
             f"{a['task']} · seed {a['seed']}", "",
             f"{c['samples']} samples ({c['unreadable']} unreadable, counted invalid) vs "
             f"{c['reference']} reference structures; novelty against the "
             f"{c['novelty_against']} set"
             + (f" ({c['train']} structures)." if c["train"] is not None else "."), "",
             "## Headline metrics", "", "| metric | value | definition |", "| --- | --- | --- |"]
    for key, label, definition in _HEADLINE:
        lines.append(f"| {label} | {_format(key, a.get(key))} | {definition.format(**names)} |")
    if a.get("sun_note"):
        lines += ["", f"Note: {a['sun_note']}."]
    lines += ["", "## Distributions", "", "| metric | value | note |", "| --- | --- | --- |"]
    for key, label, note in _DISTRIBUTION:
        lines.append(f"| {label} | {_format(key, a.get(key))} | {note.format(**names)} |")
    lines.append(f"| Space groups found | {a['space_groups_found']} | reference: "
                 f"{a['space_groups_reference']} |")
    if a.get("energy"):
        e = a["energy"]
        how = "relaxed (positions and cell)" if e["relaxed"] else "as generated (no relaxation)"
        lines += ["", "## Energy and stability", "",
                  f"Potential {e['potential']}, {how}; convex hull of {e['hull_reference']} "
                  "reference crystals plus elemental corners relaxed with the same potential "
                  "(`eval.stability`).", "",
                  "| metric | value | note |", "| --- | --- | --- |"]
        lines += [f"| {label} | {_format(key, e[key])} | {note} |"
                  for key, label, note in _ENERGY if key in e]
    for name, goal in (a.get("targets") or {}).items():
        lines += ["", f"## Target {name} in [{goal['low']:g}, {goal['high']:g}]", "",
                  "| metric | value |", "| --- | --- |"]
        lines += [f"| {label} | {_format(key, goal[key])} |" for key, label in _TARGET]
        if goal["rediscovery"]:
            r = goal["rediscovery"]
            lines.append(f"| Rediscovered of the reference's top {r['percent']:g} % "
                         f"({r['reference_crystals']}) | "
                         f"{_format('rediscovered', r['rediscovered'])} |")
    if a.get("csp"):
        s = a["csp"]
        lines += ["", "## Crystal structure prediction", "", "| metric | value |",
                  "| --- | --- |", f"| Match rate | {100 * s['match_rate']:.1f} % |",
                  f"| RMSE (normalized) | {_format('rmse', s['rmse'])} |",
                  f"| References | {s['references']} |",
                  f"| Samples per reference (k) | {s['samples_per_reference']} |"]
    lines += ["", "## Structures that failed", ""]
    for column, what in (("struct_valid", "structurally invalid"),
                         ("comp_valid", "compositionally invalid"),
                         ("unique", "duplicates of an earlier sample"),
                         ("novel", "copies of a known structure")):
        bad = np.nonzero(~frame[column].to_numpy(dtype=bool))[0]
        shown = ", ".join(str(k) for k in bad[:20]) + (" ..." if len(bad) > 20 else "")
        lines.append(f"- {len(bad)} {what}" + (f": rows {shown}" if len(bad) else ""))
    lines += ["", "Per-structure values (why a crystal failed): `per_structure.csv`.", "",
              "## Tolerances", "", "| name | value |", "| --- | --- |"]
    for key, value in t.items():
        lines.append(f"| {key} | {json.dumps(json_safe(value))} |")
    if plots:
        lines += ["", "## Plots (samples vs reference)", ""]
        lines += [f"![{_label(name)}]({name})" if name.endswith(".png")
                  else f"- [{_label(name)}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def _label(name: str) -> str:
    if name.startswith("property_"):
        return f"{name[9:-4]}: samples (independent predictor) vs reference, target shaded"
    return PLOTS[name]


# ====================================================================== plots
def _plots(report: Report, out: Path) -> list[str]:
    from matplotlib.figure import Figure  # no pyplot: no global backend, no display

    frames = {"samples": report.per_structure, "reference": report.reference}
    valid = report.per_structure["struct_valid"].to_numpy(dtype=bool)
    frames["samples"] = frames["samples"][valid]
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        written.append(name)

    bonds = report.distributions["bond_length"]
    fig = Figure(figsize=(6, 4))
    _histograms(fig.add_subplot(), bonds, "nearest-neighbour distance (Å)")
    save(fig, "bond_lengths.png")

    freq = report.distributions["element_frequency"]
    order = np.argsort(-(freq["reference"] + freq["samples"]))[:30]
    order = order[(freq["reference"][order] + freq["samples"][order]) > 0]
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    x = np.arange(len(order))
    for shift, name in ((-0.2, "reference"), (0.2, "samples")):
        ax.bar(x + shift, freq[name][order], width=0.4, label=name, color=_COLORS[name])
    ax.set_xticks(x, [Element.from_Z(int(z)).symbol for z in order])
    ax.set_ylabel("share of atoms")
    ax.legend()
    save(fig, "element_frequency.png")

    fig = Figure(figsize=(10, 6))
    for k, column in enumerate(("a", "b", "c", "alpha", "beta", "gamma")):
        unit = "Å" if k < 3 else "°"
        _histograms(fig.add_subplot(2, 3, k + 1),
                    {n: f[column].to_numpy() for n, f in frames.items()}, f"{column} ({unit})")
    save(fig, "lattice.png")

    fig = Figure(figsize=(6, 4))
    _histograms(fig.add_subplot(), {n: f["density"].to_numpy() for n, f in frames.items()},
                "density (g/cm³)")
    save(fig, "density.png")

    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    shares = {n: np.bincount(f["space_group"].to_numpy(dtype=int), minlength=231)
              / max(len(f), 1) for n, f in frames.items()}
    top = np.argsort(-(shares["reference"] + shares["samples"]))[:25]
    top = top[(shares["reference"][top] + shares["samples"][top]) > 0]
    x = np.arange(len(top))
    for shift, name in ((-0.2, "reference"), (0.2, "samples")):
        ax.bar(x + shift, shares[name][top], width=0.4, label=name, color=_COLORS[name])
    ax.set_xticks(x, [str(g) if g else "?" for g in top], rotation=90)
    ax.set_xlabel("space group number (spglib)")
    ax.set_ylabel("share of structures")
    ax.legend()
    save(fig, "space_groups.png")

    if "e_above_hull" in report.per_structure:
        fig = Figure(figsize=(10, 4))
        frame = report.per_structure
        energy = frame.get("relaxed_energy_per_atom", frame["energy_per_atom"])
        _histograms(fig.add_subplot(1, 2, 1), {"samples": energy.to_numpy(),
                                               "reference": np.zeros(0)}, "energy (eV/atom)")
        ax = fig.add_subplot(1, 2, 2)
        _histograms(ax, {"samples": frame["e_above_hull"].to_numpy(),
                         "reference": np.zeros(0)}, "energy above hull (eV/atom)")
        for x in (0.0, 0.1):
            ax.axvline(x, color="k", linestyle=":", linewidth=1)
        save(fig, "energy.png")

    for name, t in (report.aggregate.get("targets") or {}).items():
        values = report.distributions[f"property:{name}"]
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        _histograms(ax, {"samples": values["samples"],
                         "reference": (np.zeros(0) if values["reference"] is None
                                       else values["reference"])}, name)
        ax.axvspan(t["low"], t["high"] if t["high"] > t["low"] else t["low"] + 1e-3,
                   color="tab:green", alpha=0.2, label="target")
        save(fig, f"property_{name}.png")

    if "explorer" in report.distributions:
        from autoperi.eval.explorer import write_explorer

        write_explorer(report.distributions["explorer"], out / "explorer.html")
        written.append("explorer.html")
    return written


def _histograms(ax, data: dict[str, np.ndarray], xlabel: str) -> None:
    """Overlaid density histograms of samples and reference on common bins."""
    finite = {n: np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))]
              for n, v in data.items()}
    pooled = np.concatenate(list(finite.values()))
    if len(pooled):
        low, high = np.quantile(pooled, [0.001, 0.999])
        bins = np.linspace(low, high if high > low else low + 1.0, 41)
        for name, style in (("reference", {"alpha": 0.45}),
                            ("samples", {"histtype": "step", "linewidth": 1.6})):
            if len(finite[name]):
                ax.hist(np.clip(finite[name], bins[0], bins[-1]), bins=bins, density=True,
                        label=f"{name} ({len(finite[name])})", color=_COLORS[name], **style)
        ax.legend(fontsize="small")
    ax.set_xlabel(xlabel)
