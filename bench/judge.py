"""Can an independent property predictor judge a target window at all? For real crystals of
each split: MAE, how many real in-window crystals it puts in the window, how many gapped
ones (> --gapped) it sees, and its false alarms; for the shipped predictor, one refit
with an L2 loss, and (--chgnet) gradient boosting on CHGNet's 64 pretrained crystal features
(a structure-aware judge from a different model; scikit-learn, ~90 s of CHGNet on Perov-5).

    python bench/judge.py --dataset perov-5 --property dir_gap --window 1.35:1.65

Prints one JSON line per (predictor, split); writes bench/results/judge_<dataset>_<property>.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from autoperi.config import parse_targets  # noqa: E402
from autoperi.data.datasets import load_dataset  # noqa: E402
from autoperi.eval.predictor import PropertyPredictor, shipped_predictors  # noqa: E402
from autoperi.eval.targets import distance_to_window  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="perov-5")
    parser.add_argument("--property", default="dir_gap")
    parser.add_argument("--window", default="1.35:1.65")
    parser.add_argument("--gapped", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--chgnet", action="store_true")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    (_, (low, high)), = parse_targets([f"{args.property}={args.window}"]).items()
    dataset = load_dataset(args.dataset, progress=False)
    splits = {s: dataset.structures(s) for s in ("train", "val", "test")}
    judges = {"shipped": shipped_predictors(args.dataset)[args.property],
              "refit_l2": PropertyPredictor.fit(args.property, splits["train"], splits["val"],
                                                epochs=args.epochs, loss="l2")}
    if args.chgnet:
        judges["chgnet_features_hgb"] = ChgnetBoosted(splits["train"], args.property)
    rows = []
    for judge, predictor in judges.items():
        for split, structures in splits.items():
            truth = np.array([s.properties[args.property] for s in structures], dtype=float)
            pred = predictor.predict(structures)
            inside = distance_to_window(truth, low, high) == 0
            said = distance_to_window(pred, low, high) == 0
            gapped = truth > args.gapped
            row = {"judge": judge, "split": split, "mae": float(np.abs(pred - truth).mean()),
                   "in_window": int(inside.sum()),
                   "in_window_seen": float(said[inside].mean()) if inside.any() else None,
                   "predicted_in_window": int(said.sum()), "gapped": int(gapped.sum()),
                   "gapped_seen": float((pred[gapped] > args.gapped).mean()),
                   "false_alarms": float((pred[~gapped] > args.gapped).mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out) / f"judge_{args.dataset}_{args.property}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"window": [low, high], "gapped_above": args.gapped,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


class ChgnetBoosted:
    """Gradient-boosted trees on CHGNet crystal features (squared error, seed 0)."""

    def __init__(self, train, name: str):
        from chgnet.model import CHGNet
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.chgnet = CHGNet.load(verbose=False)
        # a generated crystal with an isolated atom must not abort a whole benchmark
        self.chgnet.graph_converter.set_isolated_atom_response("ignore")
        y = np.array([s.properties.get(name, np.nan) for s in train], dtype=float)
        known = np.isfinite(y)
        x = self.features([s for s, k in zip(train, known) if k])
        self.trees = HistGradientBoostingRegressor(max_iter=500, learning_rate=0.05,
                                                   random_state=0).fit(x, y[known])

    def features(self, structures) -> np.ndarray:
        out = self.chgnet.predict_structure(list(structures), task="e",
                                            return_crystal_feas=True, batch_size=64)
        if isinstance(out, dict):  # CHGNet returns a dict for a single structure
            out = [out]
        return np.stack([p["crystal_fea"] for p in out])

    def predict(self, structures) -> np.ndarray:
        return self.trees.predict(self.features(structures))


if __name__ == "__main__":
    main()
