"""Small problems shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from sccase_jax.params import Data, Factors, Hyperparams
from sccase_jax.solver import over_terms
from sccase_jax.start import dropout_mask

SHAPES = [(12, 9, 3), (7, 10, 2), (15, 6, 4)]


def tiny_problem(seed=0, m=12, n=9, k=3, dtype=jnp.float64, k_ref=0, lam=2.0, scale=1.0):
    """Random non-negative problem with the Data/Factors/Hyperparams the solver takes."""
    rng = np.random.default_rng(seed)
    X = rng.random((m, n)) * (rng.random((m, n)) < 0.6) * scale
    W = rng.random((m, k))
    H = rng.random((k, n))
    Z = rng.random((n, n)) / n
    R = np.asarray(dropout_mask(jax.random.PRNGKey(seed), n, 0.8))
    P = np.zeros((m, k))
    P[:, :k_ref] = rng.random((m, k_ref))
    M = np.zeros(k)
    M[:k_ref] = 1.0
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    Xj = cast(X)
    data = Data(X=Xj, G=Xj.T @ Xj, R=jnp.asarray(R), P=cast(P), M=cast(M))
    hp = Hyperparams.create(lam=lam, gamma1=0.5, gamma2=0.3, alpha=0.7 if k_ref else 0.0, dtype=dtype)
    return data, Factors(cast(W), cast(H), cast(Z)), hp


def typed_counts(n_per=40, k=3, peaks=200, block=40, p_on=0.5, p_off=0.03, seed=0):
    """Cells x peaks 0/1 accessibility with ``block`` open peaks per type, and the labels."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(k):
        p = np.full(peaks, p_off)
        p[t * block : (t + 1) * block] = p_on
        rows.append(rng.random((n_per, peaks)) < p)
    return np.vstack(rows), np.repeat(np.arange(k), n_per)


def dense(a):
    """A dense ndarray of a scipy sparse matrix or an array (obsp Z is stored sparse)."""
    return a.toarray() if sp.issparse(a) else np.asarray(a)


def checked_update(objective, data, layout, state, config):
    """One iteration of the solver over terms from ``state``, its reported F and change
    checked against F recomputed at the new point (and F decreased); returns the new state."""
    new = over_terms.update(state, objective, data, layout, config)
    F1 = float(objective.value(Factors(new.W, new.H, new.Z), data, layout))
    F0 = float(state.loss)
    assert float(new.loss) == pytest.approx(F1, rel=1e-12)
    assert float(new.rel_change) * abs(F0) == pytest.approx(abs(F1 - F0), rel=1e-9)
    assert F1 < F0
    return new
