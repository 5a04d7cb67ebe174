"""Gap filling on known curves, time grids, index formulas on hand values, safe division (numpy and torch)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from remote.indices import INDEX_NAMES, canonical_index, compute_index, compute_indices, safe_div
from remote.timeseries import align_grid, day_numbers, default_step, fill_gaps, regular_grid, scl_valid


def test_fill_gaps_linear_curve_edges_held_and_empty_series():
    days = np.array([0, 10, 20, 30, 40], dtype=float)
    obs = np.stack([2.0 * days + 1, -days, np.full(5, np.nan)], axis=1).astype(np.float32)  # [T, 3]
    obs[1, 0] = obs[3, 0] = np.nan          # gaps inside the first series
    obs[0, 1] = obs[4, 1] = np.nan          # gaps at both ends of the second
    grid = np.array([-5, 0, 5, 10, 15, 27.5, 40, 45], dtype=float)
    out = fill_gaps(obs, days, grid)
    assert out.shape == (8, 3) and out.dtype == np.float32
    assert np.allclose(out[1:7, 0], 2.0 * grid[1:7] + 1)          # a line is interpolated exactly
    assert out[0, 0] == 1 and out[7, 0] == 81                    # edges held (first / last valid value)
    assert np.allclose(out[3:6, 1], -grid[3:6]) and (out[:3, 1] == -10).all() and (out[-2:, 1] == -30).all()
    assert np.isnan(out[:, 2]).all()                             # no valid observation: stays NaN


def test_fill_gaps_unsorted_dates_and_image_shape():
    rng = np.random.default_rng(0)
    obs = rng.random((4, 2, 3, 3)).astype(np.float32)
    days = np.array([30, 0, 20, 10], dtype=float)
    order = np.argsort(days)
    out = fill_gaps(obs, days, days[order])
    assert out.shape == (4, 2, 3, 3) and np.array_equal(out, obs[order])
    mid = fill_gaps(obs, days, np.array([25.0]))[0]
    assert np.allclose(mid, 0.5 * (obs[2] + obs[0]))


def test_fill_gaps_bands_with_different_gaps():
    obs = np.array([[[1.0], [10.0]], [[np.nan], [20.0]], [[3.0], [np.nan]]], dtype=np.float32)  # [T=3, B=2, P=1]
    out = fill_gaps(obs, np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0]))
    assert out[:, :, 0].tolist() == [[2.0, 20.0], [3.0, 20.0]]      # band 0 interpolated, band 1 held


def test_grids():
    d0 = dt.date(2024, 3, 1)
    g = regular_grid(d0, dt.date(2024, 3, 31), 10)
    assert g == [d0, dt.date(2024, 3, 11), dt.date(2024, 3, 21), dt.date(2024, 3, 31)]
    assert default_step([d0, dt.date(2024, 3, 6), dt.date(2024, 3, 11), dt.date(2024, 3, 26)]) == 5
    assert align_grid(g, [dt.date(2025, 3, 5), dt.date(2025, 3, 25)])[0] == dt.date(2025, 3, 1)
    assert align_grid(g, g) == g
    assert day_numbers([d0])[0] == d0.toordinal()
    assert scl_valid(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])).tolist() == \
        [False, False, True, False, True, True, True, True, False, False, False, True]


HAND = {"B02": 0.04, "B03": 0.08, "B04": 0.05, "B05": 0.12, "B06": 0.30, "B08": 0.45}
EXPECTED = {
    "NDVI": (0.45 - 0.05) / (0.45 + 0.05),                                  # 0.8
    "NDRE": (0.45 - 0.12) / (0.45 + 0.12),
    "PSRI": (0.05 - 0.04) / 0.30,
    "OSAVI": (0.45 - 0.05) / (0.45 + 0.05 + 0.16),
    "TCARI": 3 * ((0.12 - 0.05) - 0.2 * (0.12 - 0.08) * (0.12 / 0.05)),    # 3 * (0.07 - 0.0192) = 0.1524
    "MCARI": ((0.12 - 0.05) - 0.2 * (0.12 - 0.08)) * (0.12 / 0.05),         # 0.062 * 2.4 = 0.1488
    "CIRE": 0.45 / 0.12 - 1,                                               # 2.75
    "MTCI": (0.30 - 0.12) / (0.12 - 0.05),
    "WDVI": 0.45 - 1.5 * 0.05,                                             # s = 1.5
}
# Haboudane et al. 2002: TCARI / OSAVI with OSAVI = (1 + 0.16)(R800 - R670) / (R800 + R670 + 0.16)
EXPECTED["TCARI/OSAVI"] = EXPECTED["TCARI"] / ((1 + 0.16) * (0.45 - 0.05) / (0.45 + 0.05 + 0.16))


@pytest.mark.parametrize("name", INDEX_NAMES)
def test_index_hand_values(name):
    exp = EXPECTED[name]
    bands = {k: np.float64(v) for k, v in HAND.items()}
    assert float(compute_index(name, bands, soil_slope=1.5)) == pytest.approx(exp, rel=1e-12)
    tb = {k: torch.tensor(v, dtype=torch.float64) for k, v in HAND.items()}
    assert float(compute_index(name, tb, soil_slope=1.5)) == pytest.approx(exp, rel=1e-12)


# Our index names -> the Awesome Spectral Indices catalog's (spyndex, run itself below), and the Sentinel-2 band of
# each catalog symbol.
SPYNDEX = {"NDVI": "NDVI", "NDRE": "NDREI", "PSRI": "PSRI", "OSAVI": "OSAVI", "TCARI": "TCARI", "MCARI": "MCARI",
           "CIRE": "CIRE", "MTCI": "MTCI", "WDVI": "WDVI", "TCARI/OSAVI": "TCARIOSAVI"}
SPYNDEX_BANDS = {"B": "B02", "G": "B03", "R": "B04", "RE1": "B05", "RE2": "B06", "N": "B08"}


@pytest.mark.parametrize("name", INDEX_NAMES)
def test_indices_equal_the_published_catalog_formulas(name):
    """On random reflectances of vegetation and soil, every index equals spyndex's ``computeIndex`` on the same
    values (the peer run itself, not a copy of its formulas); TCARI/OSAVI carries OSAVI's (1 + 0.16) factor."""
    spyndex = pytest.importorskip("spyndex")
    rng = np.random.default_rng(7)
    refl = {b: rng.uniform(0.01, 0.6, 500) for b in SPYNDEX_BANDS.values()}
    refl["B05"] = refl["B04"] + rng.uniform(0.01, 0.2, 500)       # keep MTCI's RE1 - R away from zero
    index = spyndex.indices[SPYNDEX[name]]
    params = {sym: refl[SPYNDEX_BANDS[sym]] for sym in index.bands if sym in SPYNDEX_BANDS} | {"sla": 1.3}
    expected = spyndex.computeIndex(SPYNDEX[name], params={k: v for k, v in params.items() if k in index.bands})
    got = compute_index(name, refl, soil_slope=1.3)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert set(INDEX_NAMES) == set(SPYNDEX)


def test_safe_division_and_names():
    assert np.isnan(safe_div(np.float32(1), np.float32(0)))
    assert safe_div(np.array([1.0, 2.0]), np.array([0.0, 4.0]), fill=0.0).tolist() == [0.0, 0.5]
    t = safe_div(torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.0, 4.0]), fill=0.0)
    assert t.tolist() == [0.0, 0.5]
    t.sum().backward()  # no NaN gradients from the masked division
    bands = {"B04": np.array([0.0]), "B05": np.array([0.0]), "B06": np.array([0.1]), "B08": np.array([0.0])}
    assert np.isnan(compute_index("MTCI", bands)[0]) and np.isnan(compute_index("NDVI", bands)[0])
    assert canonical_index("tcari_osavi") == "TCARI/OSAVI" and canonical_index("ndvi") == "NDVI"
    with pytest.raises(KeyError, match="unknown index"):
        canonical_index("EVI")
    with pytest.raises(KeyError, match="needs band"):
        compute_index("PSRI", {"B04": 1.0})


def test_compute_indices_on_an_axis_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.01, 0.5, (5, 7, 4)).astype(np.float32)   # [N, T, B]
    names = ["NDVI", "TCARI/OSAVI", "WDVI"]
    a = compute_indices(names, x, ["B03", "B04", "B05", "B08"], axis=-1)
    b = compute_indices(names, torch.from_numpy(x), ["B03", "B04", "B05", "B08"], axis=-1)
    for u, v in zip(a, b):
        assert u.shape == (5, 7) and np.allclose(u, v.numpy(), rtol=1e-5)


def test_fill_gaps_equals_numpy_interp_per_pixel():
    rng = np.random.default_rng(3)
    t, b, p = 7, 3, 400
    days = np.sort(rng.choice(100, t, replace=False)).astype(float)
    obs = rng.random((t, b, p)).astype(np.float32)
    gaps = rng.random((t, p)) < 0.4
    gaps[:, :5] = True                                       # pixels without any observation stay NaN
    obs[np.broadcast_to(gaps[:, None], obs.shape)] = np.nan
    grid = np.linspace(-10, 110, 13)
    out = fill_gaps(obs, days, grid)
    assert np.isnan(out[:, :, :5]).all()
    for j in range(5, p):
        ok = ~gaps[:, j]
        for k in range(b):
            assert np.allclose(out[:, k, j], np.interp(grid, days[ok], obs[ok, k, j]), atol=1e-6)
