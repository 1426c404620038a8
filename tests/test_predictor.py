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


def test_l2_loss_sees_a_rare_nonzero_class_that_l1_flattens():
    from pymatgen.core import Structure

    structures = read_structures(SAMPLE).structures
    # a zero-inflated target: 3.0 for the largest cells (a rare, learnable class), else 0
    sizes = np.array([len(s) for s in structures])
    rare = sizes >= np.quantile(sizes, 0.85)
    data = [Structure(s.lattice, s.species, s.frac_coords, properties={"gap": 3.0 * r})
            for s, r in zip(structures, rare)]
    l1 = PropertyPredictor.fit("gap", data, data, epochs=60, loss="l1")
    l2 = PropertyPredictor.fit("gap", data, data, epochs=60, loss="l2")
    assert l2.predict(data)[rare].mean() > l1.predict(data)[rare].mean() + 0.3
    assert l2.metrics["loss"] == "l2"
    with pytest.raises(ValueError, match="loss"):
        PropertyPredictor.fit("gap", data, data, epochs=1, loss="huber")
