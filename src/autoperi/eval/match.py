"""Crystal structure prediction metrics: match rate and RMSE against references."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure


@dataclass(frozen=True)
class MatcherSettings:
    """StructureMatcher tolerances. CDVAE/DiffCSP: stol 0.5, ltol 0.3, angle_tol 10."""

    stol: float = 0.5
    ltol: float = 0.3
    angle_tol: float = 10.0

    def matcher(self) -> StructureMatcher:
        return StructureMatcher(stol=self.stol, ltol=self.ltol, angle_tol=self.angle_tol)


CDVAE = MatcherSettings()
STRICT = MatcherSettings(stol=0.3, ltol=0.2, angle_tol=5.0)


def csp_rms(predicted: Sequence[Structure], reference: Sequence[Structure],
            settings: MatcherSettings = CDVAE) -> np.ndarray:
    """Normalized RMS displacement of each prediction to its reference, [S]; NaN if unmatched
    (or if the prediction is not a usable structure)."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} references")
    matcher = settings.matcher()
    out = np.full(len(predicted), np.nan)
    for k, (p, r) in enumerate(zip(predicted, reference)):
        try:
            rms = matcher.get_rms_dist(p, r)
        except Exception:  # noqa: BLE001 - degenerate predictions count as unmatched
            rms = None
        if rms is not None:
            out[k] = rms[0]
    return out


def csp_summary(rms_per_sample: np.ndarray) -> dict[str, float]:
    """rms_per_sample [R, k] (k samples per reference): match rate (any of k matched) and
    mean RMSE of the best match among matched references."""
    rms = np.atleast_2d(np.asarray(rms_per_sample, dtype=float))
    if rms.shape[0] == 1 and rms.shape[1] > 1 and rms_per_sample.ndim == 1:
        rms = rms.T
    matched = ~np.all(np.isnan(rms), axis=1)
    best = np.where(matched, np.nanmin(np.where(np.isnan(rms), np.inf, rms), axis=1), np.nan)
    return {"match_rate": float(matched.mean()),
            "rmse": float(np.nanmean(best)) if matched.any() else float("nan"),
            "references": int(rms.shape[0]), "samples_per_reference": int(rms.shape[1])}
