"""Targeted generation: did the generator hit the property window it was asked for?

Truth is an independent property predictor (`eval.predictor.PropertyPredictor`, a different
architecture from any conditioning head, trained on the reference data), never the
generator's own head. Definitions, for a target window [low, high] (a value is low = high):

- distance to the target: 0 inside the window, else how far outside;
- hit: the independent prediction lies inside the window; hit rate = hits / samples;
- MAE: mean distance of the independent predictions to the target;
- Recall@100 (the issue's name; "precision at 100" in retrieval terms): rank the samples by
  the generator's own prediction (`predicted_<name>` in their properties; distance to the
  target, ties by distance to the window centre), take the top 100 (or all, if fewer) and
  report the share of them that are hits;
- rediscovery@k%: the k % of reference crystals whose true value is closest to the target
  (all of the window when it holds more), and the share of those that at least one sample
  matches (StructureMatcher, the suite's tolerances).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from autoperi.eval.match import MatcherSettings
from autoperi.eval.novelty import first_matches

RECALL_TOP = 100
REDISCOVERY_PERCENT = 5.0


def distance_to_window(values, low: float, high: float) -> np.ndarray:
    """0 inside [low, high], else the distance to the nearer end; NaN stays NaN."""
    values = np.asarray(values, dtype=float)
    return np.maximum(low - values, 0.0) + np.maximum(values - high, 0.0)


def ranking(values, low: float, high: float) -> np.ndarray:
    """Indices from closest to farthest from the target (NaN last); inside the window,
    closer to its centre first."""
    values = np.asarray(values, dtype=float)
    outside = np.where(np.isnan(values), np.inf, distance_to_window(values, low, high))
    centre = np.where(np.isnan(values), np.inf, np.abs(values - (low + high) / 2))
    return np.lexsort((centre, outside))


def recall_at(own, independent, low: float, high: float, top: int = RECALL_TOP) -> float:
    """Share of hits (independent prediction in the window) among the `top` samples ranked
    by the generator's own prediction. NaN when there is no own prediction."""
    own = np.asarray(own, dtype=float)
    if not np.isfinite(own).any():
        return float("nan")
    chosen = ranking(own, low, high)[:min(top, int(np.isfinite(own).sum()))]
    return float((distance_to_window(np.asarray(independent)[chosen], low, high) == 0).mean())


def top_reference(values, low: float, high: float, percent: float) -> np.ndarray:
    """Indices of the reference's best `percent` % for the target (all in-window ones when
    the window holds more)."""
    values = np.asarray(values, dtype=float)
    inside = int((distance_to_window(values, low, high) == 0).sum())
    count = max(inside, int(np.ceil(np.isfinite(values).sum() * percent / 100)))
    count = min(count, int(np.isfinite(values).sum()))
    return ranking(values, low, high)[:count]


def evaluate_targets(samples: Sequence[Structure], reference: Sequence[Structure],
                     targets: dict, predictors: dict, matcher: MatcherSettings,
                     reference_properties: dict | None = None, workers: int = 1,
                     progress: bool = True, top: int = RECALL_TOP,
                     percent: float = REDISCOVERY_PERCENT, unreadable: int = 0
                     ) -> tuple[pd.DataFrame, dict]:
    """Per-sample columns <name>_predicted (independent), <name>_own, <name>_hit and the
    summary per target (see the module doc); `unreadable` samples count as misses."""
    total = len(samples) + unreadable
    frame = pd.DataFrame(index=range(len(samples)))
    summary = {}
    for name, (low, high) in targets.items():
        if name not in predictors:
            raise ValueError(f"target {name!r}: no independent predictor for it (have "
                             f"{sorted(predictors) or 'none'})")
        predicted = np.asarray(predictors[name].predict(samples), dtype=float)
        own = np.array([_number((s.properties or {}).get(f"predicted_{name}"))
                        for s in samples])
        distance = distance_to_window(predicted, low, high)
        frame[f"{name}_predicted"], frame[f"{name}_own"] = predicted, own
        frame[f"{name}_hit"] = distance == 0
        truth = reference_values(reference, name, reference_properties)
        item = {"low": low, "high": high, "hit_rate": float((distance == 0).sum() / total),
                "mae": float(np.nanmean(distance)),
                "mean_predicted": float(np.nanmean(predicted)),
                "own_hit_rate": (float((distance_to_window(own, low, high) == 0).sum() / total)
                                 if np.isfinite(own).any() else None),
                f"recall@{top}": recall_at(own, predicted, low, high, top),
                "reference_in_window": None, "rediscovery": None}
        if truth is not None:
            chosen = top_reference(truth, low, high, percent)
            hits = first_matches([reference[k] for k in chosen], samples, matcher, workers,
                                 progress)
            item.update(reference_in_window=float((distance_to_window(truth, low, high) == 0)
                                                  .mean()),
                        rediscovery={"percent": percent, "reference_crystals": len(chosen),
                                     "rediscovered": float((hits >= 0).mean())
                                     if len(chosen) else float("nan")})
        summary[name] = item
    return frame, summary


def reference_values(reference, name, given) -> np.ndarray | None:
    """True values of property `name` for the reference: `given[name]` or the structures'
    properties; None when neither has any."""
    if given is not None and name in given:
        values = np.asarray(given[name], dtype=float)
        if len(values) != len(reference):
            raise ValueError(f"reference_properties[{name!r}] has {len(values)} values for "
                             f"{len(reference)} references")
        return values
    values = np.array([_number((s.properties or {}).get(name)) for s in reference])
    return values if np.isfinite(values).any() else None


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
