import pytest
import torch

from autoperi.data.features import (
    PropertyScaler,
    composition_features,
    element_feature_names,
    element_features,
)


def test_table_matches_known_element_values():
    raw, missing = element_features(standardize=False)
    names = element_feature_names()
    col = {n: k for k, n in enumerate(names)}
    assert raw[26, col["Number"]] == 26
    assert raw[8, col["Row"]] == 2 and raw[8, col["Column"]] == 16
    assert raw[8, col["Electronegativity"]] == pytest.approx(3.44)
    assert raw[11, col["NsValence"]] == 1
    assert bool(missing[2, col["Electronegativity"]])  # He has no Pauling electronegativity
    assert not bool(missing[8, col["Electronegativity"]])


def test_standardized_columns_have_unit_scale():
    table, _ = element_features()
    assert torch.allclose(table[1:].mean(0), torch.zeros(table.shape[1]), atol=1e-5)
    assert torch.allclose(table[1:].std(0, unbiased=False), torch.ones(table.shape[1]), atol=1e-4)
    assert torch.all(table[0] == 0)


def test_composition_features_on_hand_computed_cases():
    names = element_feature_names()
    z = names.index("Number")
    f = len(names)
    # NaCl (Z 11, 17) and Fe2O3 (Z 26, 26, 8 in one crystal as written).
    numbers = torch.tensor([11, 17, 26, 26, 8])
    crystal = torch.tensor([0, 0, 1, 1, 1])
    out = composition_features(numbers, crystal, 2)
    assert out.shape == (2, 5 * f)
    mean, dev, low, high, span = (out[:, k * f + z] for k in range(5))
    assert mean.tolist() == pytest.approx([14.0, 20.0])
    assert dev.tolist() == pytest.approx([3.0, 8.0])
    assert low.tolist() == [11.0, 8.0] and high.tolist() == [17.0, 26.0]
    assert span.tolist() == [6.0, 18.0]


def test_composition_features_are_permutation_invariant():
    numbers = torch.tensor([26, 8, 26, 8, 8])
    crystal = torch.zeros(5, dtype=torch.long)
    perm = torch.tensor([4, 2, 0, 3, 1])
    a = composition_features(numbers, crystal, 1)
    b = composition_features(numbers[perm], crystal, 1)
    assert torch.allclose(a, b)


def test_unknown_element_is_refused():
    with pytest.raises(ValueError, match="atomic numbers"):
        composition_features(torch.tensor([118]), torch.tensor([0]), 1)


def test_property_scaler_round_trip_and_nan():
    props = {"gap": torch.tensor([0.0, 2.0, float("nan"), 4.0]), "e": torch.tensor([1.0] * 4)}
    scaler = PropertyScaler.fit(props)
    scaled = scaler.transform(props)
    known = scaled["gap"][~scaled["gap"].isnan()]
    assert known.mean().abs() < 1e-6 and known.std() == pytest.approx(1.0)
    assert torch.isnan(scaled["gap"][2])
    assert scaler.std[scaler.names.index("e")] == 1.0  # constant column: no division by 0
    back = scaler.inverse(scaled)
    assert torch.allclose(back["gap"], props["gap"], equal_nan=True)
    assert PropertyScaler.from_dict(scaler.to_dict()) == scaler
    with pytest.raises(ValueError, match="no known values"):
        PropertyScaler.fit({"x": torch.tensor([float("nan")])})
