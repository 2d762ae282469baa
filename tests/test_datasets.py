import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccase_jax.datasets import simulate_from_bulk


def _bulk(m=40):
    rng = np.random.default_rng(3)
    B = rng.gamma(0.5, 10.0, size=(3, m))
    B[0, :5] *= 50  # a marker block per type
    B[1, 5:10] *= 50
    B[2, 10:15] *= 50
    obs = pd.DataFrame({"cell_type": ["A", "B", "C"]}, index=["a", "b", "c"])
    return ad.AnnData(B.astype(np.float32), obs=obs)


def test_simulation_is_seeded_and_consistent():
    bulk = _bulk()
    a = simulate_from_bulk(bulk, 30, depth=200, noise=0.3, seed=1)
    b = simulate_from_bulk(bulk, 30, depth=200, noise=0.3, seed=1)
    c = simulate_from_bulk(bulk, 30, depth=200, noise=0.3, seed=2)
    assert a.shape == (90, 40) and sp.issparse(a.X)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    assert not np.array_equal(a.X.toarray(), c.X.toarray())
    # every read is accounted for, labels follow the profiles in order
    np.testing.assert_array_equal(np.asarray(a.X.sum(axis=1)).ravel(), a.obs["n_reads"].to_numpy())
    assert list(a.obs["cell_type"].cat.categories) == ["A", "B", "C"]
    assert (a.obs["cell_type"].astype(str).to_numpy()[:30] == "A").all()
    truth = a.layers["truth"]
    np.testing.assert_allclose(truth.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a.layers["open"].toarray(), (truth >= 1 / 40).astype(np.float32))


def test_simulated_reads_follow_the_profiles():
    bulk = _bulk()
    a = simulate_from_bulk(bulk, 200, depth=500, depth_sd=0.0, noise=0.0, seed=0)
    assert (a.obs["n_reads"] == 500).all()
    X = a.X.toarray()
    for t in range(3):
        share = X[t * 200:(t + 1) * 200].sum(axis=0) / (200 * 500)
        np.testing.assert_allclose(share, a.layers["truth"][t * 200], atol=0.01)
    # with all reads noise the types are indistinguishable: every peak's share is 1/m
    b = simulate_from_bulk(bulk, 200, depth=500, depth_sd=0.0, noise=1.0, seed=0)
    share = b.X.toarray().sum(axis=0) / b.X.sum()
    np.testing.assert_allclose(share, 1 / 40, atol=0.005)


@pytest.mark.parametrize("kw, msg", [
    (dict(noise=1.5), "noise"),
    (dict(depth=0), "depth"),
    (dict(n_cells=0), "n_cells"),
    (dict(depth_sd=-1), "depth_sd"),
])
def test_simulation_rejects_bad_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        simulate_from_bulk(_bulk(), **{"n_cells": 5, **kw})


def test_simulation_rejects_bad_profiles():
    bulk = _bulk()
    bulk.X[1] = 0
    with pytest.raises(ValueError, match="without any signal"):
        simulate_from_bulk(bulk, 5)
    bulk.X[1] = -1
    with pytest.raises(ValueError, match="non-negative"):
        simulate_from_bulk(bulk, 5)
