"""Hiding counts and scoring their recovery."""

import helpers
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from sccase_jax.evaluation.recovery import hide_counts, knn_average, recovery_scores


def typed_counts(n_per=30, k=3, peaks=90, seed=0):
    C, _ = helpers.typed_counts(n_per, k, peaks, block=30, p_on=0.6, p_off=0.03, seed=seed)
    return sp.csr_matrix(C.astype(np.float32) * 2)


def test_hide_counts_is_seeded_and_exact():
    C = typed_counts()
    obs, hid = hide_counts(C, 0.2, seed=3)
    assert obs.nnz + hid.nnz == C.nnz
    assert abs(hid.nnz / C.nnz - 0.2) < 0.05
    assert not (obs.multiply(hid)).nnz  # hidden entries are gone from the observed matrix
    np.testing.assert_array_equal((obs + C.multiply(hid)).toarray(), C.toarray())
    obs2, hid2 = hide_counts(C, 0.2, seed=3)
    assert (hid2 != hid).nnz == 0
    with pytest.raises(ValueError):
        hide_counts(C, 1.0)


def test_recovery_scores_oracle_observed_and_pooled():
    C = typed_counts()
    obs, hid = hide_counts(C, 0.2, seed=0)
    truth = C.toarray() > 0
    perfect = recovery_scores(truth.astype(float), obs, hid)
    assert perfect["auroc_cell"] == pytest.approx(1.0) and perfect["auprc_pooled"] == pytest.approx(1.0)
    flat = recovery_scores(obs.toarray(), obs, hid)  # candidates are all zero: chance level
    assert flat["auroc_cell"] == pytest.approx(0.5) and flat["auroc_pooled"] == pytest.approx(0.5)
    assert flat["auprc_pooled"] == pytest.approx(flat["base_rate"])
    rng = np.random.default_rng(1)
    s = rng.random(C.shape)
    valid = obs.toarray() == 0
    expect = roc_auc_score(hid.toarray()[valid], s[valid])
    assert recovery_scores(s, obs, hid, block=7)["auroc_pooled"] == pytest.approx(expect)


def test_knn_average_recovers_type_structure():
    C = typed_counts()
    obs, hid = hide_counts(C, 0.2, seed=0)
    X = obs.multiply(1.0 / np.maximum(obs.sum(1), 1)).tocsr()
    sm = knn_average(X, n_neighbors=10, n_pcs=5)
    assert sm.shape == C.shape
    assert recovery_scores(sm, obs, hid)["auroc_cell"] > 0.8
