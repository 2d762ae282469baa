"""Batch correction of the cell embedding (Harmony), and the output weights it gives.

``enhance(..., batch_key=KEY)`` with ``batch_method="harmony"`` (the default) fits scCASE as
without batches, then corrects the fit's cell embedding ``H^T`` (cells x k) for the batches
with Harmony (Korsunsky et al. 2019, through the maintained ``harmonypy`` package, as
ArchR and SnapATAC2 correct their LSI / spectral embeddings), and builds the similarity the
output averages over from the corrected embedding instead of the fitted Z:
``Zh = max(Hc Hc^T, 0)`` (the form ``Z ~ H^T H`` takes at the default lam), cut to each
cell's neighbours by the usual output rule (:mod:`sccase_jax.output`).  A cell's enhanced
profile then averages the cells of its type in every batch.  ``batch_method="term"`` keeps
the in-objective batch term (docs/batch.md).

Arrays in, arrays out: cells x dimensions, AnnData orientation.
"""

from __future__ import annotations

import numpy as np

from sccase_jax.options import BATCH_METHODS
from sccase_jax.validate import InputError

__all__ = ["BATCH_METHODS", "harmony"]


def harmony(emb, batch, *, seed: int = 0, theta: float = 2.0, max_iter: int = 10) -> np.ndarray:
    """The Harmony-corrected embedding (cells x d, float64) of ``emb`` for ``batch``.

    ``emb`` is cells x d (here the fit's ``H^T``), ``batch`` one label or integer code per
    cell (at least two batches).  ``theta`` is Harmony's diversity penalty (its default 2),
    ``max_iter`` its number of rounds; the clustering inside Harmony is seeded by ``seed``.
    Needs ``harmonypy`` (``pip install "sccase_jax[batch]"``).
    """
    try:
        import harmonypy
    except ImportError:  # an optional dependency: name the command that installs it
        raise InputError("batch_method='harmony' needs harmonypy: pip install "
                         "'sccase_jax[batch]' (or batch_method='term')") from None
    import pandas as pd

    emb = np.asarray(emb, np.float64)
    batch = np.asarray(batch)
    if emb.ndim != 2 or batch.shape != (emb.shape[0],):
        raise InputError(f"harmony needs a cells x d embedding and one batch per cell, got "
                         f"{emb.shape} and {batch.shape}")
    if np.unique(batch).size < 2:
        raise InputError("harmony needs at least two batches")
    meta = pd.DataFrame({"batch": batch.astype(str)})
    ho = harmonypy.run_harmony(emb, meta, ["batch"], theta=theta, max_iter_harmony=max_iter,
                               random_state=int(seed), verbose=False)
    Zc = np.asarray(ho.Z_corr, np.float64)
    # harmonypy < 2 returns d x cells, 2.x cells x d.
    return Zc if Zc.shape == emb.shape else Zc.T
