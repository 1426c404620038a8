"""Train and ship the independent property predictors used to judge targeted generation.

    python tools/train_predictors.py

Each predictor learns one property of a bundled dataset from its train split (model
selection on val) and reports its test-split MAE; written to
src/autoperi/pretrained/predictors/<dataset>/<property>/.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from autoperi.data.datasets import load_dataset  # noqa: E402
from autoperi.eval.predictor import PropertyPredictor  # noqa: E402

TARGETS = {"perov-5": ("dir_gap", "heat_ref"), "mp-20": ("band_gap", "formation_energy_per_atom")}
ROOT = Path(__file__).parents[1] / "src/autoperi/pretrained/predictors"


def main() -> None:
    torch.set_num_threads(1)
    summary = {}
    for name, properties in TARGETS.items():
        dataset = load_dataset(name, progress=False)
        train, val, test = (dataset.structures(s) for s in ("train", "val", "test"))
        for prop in properties:
            predictor = PropertyPredictor.fit(prop, train, val, epochs=150)
            truth = np.array([s.properties[prop] for s in test])
            predictor.metrics["test_mae"] = float(np.abs(predictor.predict(test) - truth).mean())
            predictor.metrics["test_mae_of_mean"] = float(np.abs(truth - predictor.y_mean).mean())
            predictor.save(ROOT / name / prop)
            summary[f"{name}/{prop}"] = predictor.metrics
            print(name, prop, json.dumps(predictor.metrics), flush=True)
    (ROOT / "README.md").write_text(
        "# Independent property predictors\n\nMLPs on Magpie composition statistics and cell "
        "descriptors (`autoperi.eval.predictor`), one per property, trained by "
        "`tools/train_predictors.py` on each bundled dataset's train split (seed 0), best "
        "epoch on val. They share nothing with the generators' heads and judge targeted "
        "generation.\n\n| predictor | train | test MAE | MAE of predicting the mean |\n"
        "| --- | --- | --- | --- |\n" + "".join(
            f"| {k} | {m['train_size']} | {m['test_mae']:.3f} | {m['test_mae_of_mean']:.3f} |\n"
            for k, m in summary.items()))


if __name__ == "__main__":
    main()
