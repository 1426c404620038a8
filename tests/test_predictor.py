"""The independent property predictor: learns, saves, loads; the shipped ones load."""

from pathlib import Path

import numpy as np
import pytest

from autoperi.data.io import read_structures
from autoperi.eval.predictor import PropertyPredictor, descriptors

SAMPLE = Path(__file__).parent / "data" / "mp20_sample.csv"
SHIPPED = Path(__file__).parents[1] / "src/autoperi/pretrained/predictors"


def test_descriptors_are_invariant_to_cell_setting():
    s = read_structures(SAMPLE)[0]
    bigger = s.copy()
    bigger.make_supercell([2, 1, 1])  # same crystal, other cell
    a, b = descriptors([s]), descriptors([bigger])
    f = a.shape[1]
    # Composition statistics and per-atom volume/density do not change; atom count does.
    assert np.allclose(a[0, : f - 9], b[0, : f - 9], atol=1e-5)
    assert np.allclose(a[0, f - 9 : f - 7], b[0, f - 9 : f - 7], atol=1e-4)
    assert b[0, f - 2] == 2 * a[0, f - 2]


def test_fit_beats_the_mean_and_round_trips(tmp_path):
    structures = read_structures(SAMPLE).structures
    predictor = PropertyPredictor.fit("formation_energy_per_atom", structures[:45],
                                      structures[45:], epochs=40)
    m = predictor.metrics
    assert m["val_mae"] < m["val_mae_of_mean"]
    predictor.save(tmp_path / "p")
    again = PropertyPredictor.load(tmp_path / "p")
    assert np.allclose(again.predict(structures[:5]), predictor.predict(structures[:5]))
    with pytest.raises(ValueError, match="property"):
        PropertyPredictor.fit("no_such_property", structures, structures, epochs=1)


def test_shipped_predictors_are_informative():
    structures = read_structures(SAMPLE).structures
    predictor = PropertyPredictor.load(SHIPPED / "mp-20" / "formation_energy_per_atom")
    truth = np.array([s.properties["formation_energy_per_atom"] for s in structures])
    error = np.abs(predictor.predict(structures) - truth).mean()
    assert error < 0.5 * np.abs(truth - truth.mean()).mean()
