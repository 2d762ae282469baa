"""``sccase-jax evaluate``: files written, numbers sane, user errors as exit status 2."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccase_jax.cli import main


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = []
    for t in range(3):
        p = np.full(150, 0.04)
        p[t * 40 : (t + 1) * 40] = 0.5
        rows.append(rng.random((40, 150)) < p)
    C = np.vstack(rows).astype(np.float32)
    lab = np.repeat(["B", "T", "Mono"], 40)
    a = ad.AnnData(sp.csr_matrix(C), obs=pd.DataFrame({"cell_type": lab}, index=[f"c{i}" for i in range(120)]))
    # a stand-in "enhanced" layer: each cell averaged with its own type (an oracle)
    E = np.vstack([C[lab == x].mean(0) for x in lab]) + 0.01 * rng.random(C.shape)
    a.layers["sccase"] = E.astype(np.float32)
    a.uns["sccase"] = {"loss": np.array([3.0, 2.0, 1.5]), "initial_loss": 4.0, "params": {"lam": 1e6}}
    path = tmp_path_factory.mktemp("ev") / "in.h5ad"
    a.write_h5ad(path)
    return path


def test_evaluate_writes_metrics_and_figures(h5ad, tmp_path):
    out = tmp_path / "report"
    rc = main(["evaluate", str(h5ad), "--labels", "cell_type", "--out", str(out), "--graph", "knn",
               "--no-umap", "--tsne", "--seeds", "0", "1", "--n-pcs", "10", "--quiet"])
    assert rc == 0
    rep = json.loads((out / "metrics.json").read_text())
    enh = rep["results"]["enhanced (sccase)"]
    assert enh["ari"] == pytest.approx(1.0) and enh["reached"]
    assert rep["results"]["raw (TF-IDF, Eq. 1)"]["ari"] > 0.5 and rep["results"]["raw (L2 TF-IDF)"]["ari"] > 0.5
    assert rep["n_types"] == 3 and rep["imbalance_index"] == pytest.approx(0.0, abs=1e-12)
    assert rep["enhance_params"]["lam"] == 1e6
    assert sorted(rep["figures"]) == ["loss.png", "tsne.png"]
    for f in ("tsne.png", "loss.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    md = (out / "metrics.md").read_text()
    assert "| enhanced (sccase) | 1.000 |" in md


def test_evaluate_user_errors(h5ad, tmp_path, capsys):
    rc = main(["evaluate", str(h5ad), "--labels", "nope", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    assert "labels column 'nope' not in obs" in capsys.readouterr().err
    rc = main(["evaluate", str(tmp_path / "missing.h5ad"), "--labels", "cell_type", "--out", str(tmp_path)])
    assert rc == 2
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["evaluate", str(h5ad), "--labels", "cell_type", "--out", str(f), "--quiet"]) == 2
