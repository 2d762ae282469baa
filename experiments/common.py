"""Data paths and loaders shared by the experiments.

Every experiment is a module of the package ``experiments``, run from the repository root
as ``python -m experiments.NAME`` (``python -m experiments.archive.NAME`` for the archived
ones); see ``experiments/README.md``.

``DATA`` is the directory of the shared ``.h5ad`` files: ``$SCCASE_DATA`` when set, else
``shared/data`` beside the repository checkout (``/work/shared/data`` for a checkout in
``/work/main``).  ``load(name)`` reads one of them, or builds a dataset derived from them
(``DERIVED``).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository checkout
DATA = Path(os.environ.get("SCCASE_DATA", ROOT.parent / "shared" / "data"))
DOCS = ROOT / "docs"
RESULTS = ROOT / "experiments" / "results"

# The shared files the experiments name (``DATA / f"{name}.h5ad"``; ``$SCCASE_DATA/README.md``).
D6T1_2K = "granja2019_D6T1_2k"  # Granja 2019 donor D6T1, 2,055 cells, 16 types
D6T1_10K = "granja2019_D6T1_10k"  # all 10,335 cells of donor D6T1
BM600 = "granja2019_bm600"  # 600 cells, 6 types
CHROMVAR = "chromvar_example_counts"  # 50 Buenrostro 2015 cells, GM12878 vs H1
D5T1_PSEUDOBULK = "granja2019_D5T1_pseudobulk_ref"  # 16 pseudo-bulk profiles of donor D5T1
CORCES_BULK = "corces2016_bulk_signature"  # 13 sorted bulk profiles over 1,768 peaks

# Derived datasets ``load`` builds.  Sorted populations with a known truth: cells sampled
# from the Corces 2016 bulk profiles (100 a type), 70 % of each cell's reads on random
# peaks, about 100 reads a cell (``sccase_jax.datasets.simulate_from_bulk``).  The paper's
# evaluation drops cell types below 3 % of the cells ("to ensure evaluation credibility",
# methods text); the D6T1 target keeps all 16, so both are reported.
SIMULATED = {"sim_corces2016": dict(n_cells=100, depth=100.0, depth_sd=0.5, noise=0.7, seed=0)}
MIN_TYPE_FRAC = {"granja2019_D6T1_2k_types3pct": (D6T1_2K, 0.03)}
# Random (not stratified) subsamples of the whole donor D6T1, seed 0: its natural type mix
# at the sizes scCASER is measured at; and the 108 cells of donor D5T1 in bm600 alone (a
# small set of the other donor, 6 types).
SUBSAMPLES = {f"granja2019_D6T1_10k_sub{n}": n for n in (500, 1500, 2000)}
DONOR_SUBSETS = {"granja2019_bm600_D5T1": (BM600, "Group", "BMMC_D5T1")}
# Shallower copies of a set: each read kept with this probability (binomial thinning, seed
# 0), to test rules that depend on the depth of the cells (the output's neighbours).
THINNED = {"granja2019_D6T1_10k_sub2000_half": ("granja2019_D6T1_10k_sub2000", 0.5)}
DERIVED = (*SIMULATED, *MIN_TYPE_FRAC, *SUBSAMPLES, *DONOR_SUBSETS, *THINNED)

# Benchmark data: the real counts by short name, and synthetic sizes (cells, peaks before
# the peak filter) for ``synthetic_counts``.
REAL = {"real2k": D6T1_2K, "real10k": D6T1_10K}
SYNTH = {"synth300": (300, 3000), "synth1k": (1000, 10000), "synth2k": (2000, 20000),
         "synth4k": (4000, 30000), "synth8k": (8000, 40000)}


def data_path(name: str) -> Path:
    """The path of a shared file: ``DATA / name`` (``.h5ad`` added when missing)."""
    return DATA / (name if name.endswith(".h5ad") else f"{name}.h5ad")


def load(name: str):
    """The AnnData of a shared file (``data_path(name)``) or of a ``DERIVED`` dataset."""
    import anndata as ad

    if name in MIN_TYPE_FRAC:
        base, frac = MIN_TYPE_FRAC[name]
        return drop_rare_types(load(base), frac)
    if name in SIMULATED:
        return simulate_sorted(**SIMULATED[name])
    if name in SUBSAMPLES:
        import numpy as np

        full = load(D6T1_10K)
        idx = np.sort(np.random.default_rng(0).choice(full.n_obs, SUBSAMPLES[name], replace=False))
        return full[idx].copy()
    if name in THINNED:
        import numpy as np
        import scipy.sparse as sp

        base, keep = THINNED[name]
        a = load(base)
        X = sp.csr_matrix(a.X, dtype=np.float64)
        X.data = np.random.default_rng(0).binomial(X.data.astype(np.int64), keep).astype(np.float64)
        X.eliminate_zeros()
        a.X = X.astype(np.float32)
        return a
    if name in DONOR_SUBSETS:
        base, key, value = DONOR_SUBSETS[name]
        a = load(base)
        a = a[(a.obs[key] == value).to_numpy()].copy()
        a.obs["cell_type"] = a.obs["cell_type"].astype(str).astype("category")
        return a
    path = data_path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the shared data directory is {DATA} (set SCCASE_DATA to the "
            f"directory that holds the shared .h5ad files; derived datasets: {', '.join(DERIVED)})")
    return ad.read_h5ad(path)


def counts(name: str):
    """Cells x peaks counts of a shared file as a scipy CSR float32 matrix."""
    import numpy as np
    import scipy.sparse as sp

    return sp.csr_matrix(load(name).X, dtype=np.float32)


def drop_rare_types(a, frac: float):
    """The cells of ``a`` whose ``cell_type`` holds at least ``frac`` of the cells."""
    types = a.obs["cell_type"].astype(str)
    share = types.map(types.value_counts(normalize=True))
    a = a[share.to_numpy() >= frac].copy()
    a.obs["cell_type"] = a.obs["cell_type"].astype(str).astype("category")
    return a


def simulate_sorted(**kw):
    """Cells simulated from the Corces 2016 sorted bulk profiles
    (``sccase_jax.datasets.simulate_from_bulk(bulk, **kw)``)."""
    from sccase_jax.datasets import simulate_from_bulk

    return simulate_from_bulk(load(CORCES_BULK), **kw)


def synthetic_counts(n, m, density=0.037, n_types=8, seed=0):
    """scATAC-like binary counts (cells x peaks CSR): type-specific peak probabilities."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n)
    base = rng.gamma(0.6, 1.0, m)
    prof = base[None, :] * np.exp(rng.normal(0.0, 1.0, (n_types, m)))
    prof *= density / prof.mean()
    prof = np.clip(prof, 0, 0.9).astype(np.float32)
    depth = rng.lognormal(0.0, 0.3, n).astype(np.float32)
    blocks = []
    for j in range(0, n, 250):
        p = prof[types[j : j + 250]] * depth[j : j + 250, None]
        blocks.append(sp.csr_matrix((rng.random(p.shape, dtype=np.float32) < p).astype(np.float32)))
    return sp.vstack(blocks).tocsr(), types


def problem(name: str, peaks_per_cell: int | None = None):
    """The solver's inputs (``sccase_jax.problem.prepare``, seed 0) for a named problem.

    ``real2k``: the Granja D6T1 2k counts with the package's preprocessing (L2 TF-IDF, no
    peak filter), k = 6 (the K estimate + 1 there).  ``synth1k`` ... ``synth8k``:
    ``synthetic_counts`` at the sizes of ``SYNTH`` (``peaks_per_cell`` times the cells
    instead, when given) with the paper's preprocessing (1 % peak filter, Eq. 1 TF-IDF),
    k = 9, as ``benchmark.py`` fits them.
    """
    import numpy as np

    from sccase_jax.preprocessing import preprocess
    from sccase_jax.problem import prepare

    if name == "real2k":
        X, _, _ = preprocess(counts(D6T1_2K).T.tocsr(), min_cells_frac=0.0, tfidf_variant="l2")
        return prepare(X, 6, seed=0)
    if name not in SYNTH:
        raise ValueError(f"unknown problem {name!r}: real2k or one of {', '.join(SYNTH)}")
    n, m = SYNTH[name]
    C, _ = synthetic_counts(n, peaks_per_cell * n if peaks_per_cell else m)
    X, _, _ = preprocess(C.T.tocsr().astype(np.float64), min_cells_frac=0.01,
                         tfidf_variant="paper")
    return prepare(X, 9, seed=0)
