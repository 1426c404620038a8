"""The Property Explorer: reference and generated crystals on one 3-D map, coloured by a
property, as a self-contained HTML file (plotly, its JavaScript embedded: works offline).

The map is a PCA of fingerprints (Magpie composition statistics and the radial
fingerprints of `eval.novelty`, each feature standardized on the reference) fitted on the
reference set; samples are projected into the same axes, so "a sample far from every
reference crystal" reads directly off the picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from autoperi.atomic import atomic_path
from autoperi.eval.distribution import composition_fingerprints
from autoperi.eval.novelty import radial_fingerprints


def features(structures: Sequence[Structure]) -> np.ndarray:
    """[S, F] composition + radial fingerprints (NaN rows where a structure is unusable)."""
    return np.concatenate([composition_fingerprints(structures),
                           radial_fingerprints(structures)], axis=1)


def pca_map(reference: np.ndarray, samples: np.ndarray, dims: int = 3
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference [R, dims], samples [S, dims], explained variance ratio [dims]): principal
    axes of the standardized reference features; samples projected onto them."""
    finite = np.isfinite(reference).all(axis=1)
    if finite.sum() < 2:
        raise ValueError("the explorer needs at least two usable reference structures")
    mean = reference[finite].mean(axis=0)
    std = reference[finite].std(axis=0)
    std[std < 1e-12] = 1.0  # constant features carry no information
    z = (reference[finite] - mean) / std
    _, singular, axes = np.linalg.svd(z, full_matrices=False)
    axes = axes[:dims]
    explained = singular[:dims] ** 2 / np.sum(singular ** 2)

    def project(x: np.ndarray) -> np.ndarray:
        out = ((x - mean) / std) @ axes.T  # NaN rows stay NaN
        return np.pad(out, ((0, 0), (0, dims - out.shape[1])))  # fewer axes than dims: 0

    return project(reference), project(samples), np.pad(explained, (0, dims - len(explained)))


def explorer_data(samples: Sequence[Structure], reference: Sequence[Structure],
                  sample_values, reference_values, label: str) -> dict:
    """Everything the HTML needs: coordinates, colours, hover texts."""
    xr, xs, explained = pca_map(features(reference), features(samples))
    return {"reference": xr, "samples": xs, "explained": explained, "label": label,
            "reference_values": np.asarray(reference_values, dtype=float),
            "sample_values": np.asarray(sample_values, dtype=float),
            "reference_names": [s.composition.reduced_formula for s in reference],
            "sample_names": [s.composition.reduced_formula for s in samples]}


def write_explorer(data: dict, path: str | Path, title: str = "AutoPeri Property Explorer"
                   ) -> Path:
    """Write the 3-D map as one HTML file with plotly's JavaScript inside."""
    import plotly.graph_objects as go

    values = np.concatenate([data["reference_values"], data["sample_values"]])
    finite = values[np.isfinite(values)]
    low, high = (np.quantile(finite, [0.02, 0.98]) if len(finite) else (0.0, 1.0))
    figure = go.Figure()
    for name, symbol, size in (("reference", "circle", 3), ("samples", "diamond", 4)):
        xyz = data[name]
        vals = data["reference_values" if name == "reference" else "sample_values"]
        names = data["reference_names" if name == "reference" else "sample_names"]
        keep = np.isfinite(xyz).all(axis=1)
        text = [f"{name} #{k}: {names[k]}<br>{data['label']} = {vals[k]:.3g}"
                for k in np.nonzero(keep)[0]]
        figure.add_trace(go.Scatter3d(
            x=xyz[keep, 0], y=xyz[keep, 1], z=xyz[keep, 2], mode="markers", name=name,
            text=text, hoverinfo="text",
            marker={"size": size, "symbol": symbol, "color": vals[keep], "cmin": low,
                    "cmax": high, "colorscale": "Viridis",
                    "opacity": 0.5 if name == "reference" else 0.9,
                    "colorbar": {"title": data["label"]} if name == "samples" else None}))
    axes = {f"{k}axis": {"title": f"PC{i + 1} ({100 * data['explained'][i]:.0f} %)"}
            for i, k in enumerate("xyz")}
    figure.update_layout(title=title, scene=axes, legend={"itemsizing": "constant"},
                         margin={"l": 0, "r": 0, "t": 40, "b": 0})
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(figure.to_html(include_plotlyjs=True, full_html=True), encoding="utf-8")
    return path
