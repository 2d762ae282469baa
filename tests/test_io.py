"""Block-by-block writing of the enhanced layer: anndata reads back exactly (X Z)^T."""

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import dense

from sccase_jax import cli
from sccase_jax.io import write_enhanced_h5ad
from sccase_jax.output import enhanced_blocks, enhanced_matrix, minmax_scale
from sccase_jax.tl import enhance


def _xz(m=15, n=10, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(m, n, density=0.4, random_state=rng, format="csr") * 2.0
    return X, rng.random((n, n))


@pytest.mark.parametrize("scale", [False, True])
def test_blocks_equal_the_in_memory_matrix(scale):
    X, Z = _xz()
    want = enhanced_matrix(X, Z)
    if scale:
        minmax_scale(want)
    got = np.concatenate([E for _, E in enhanced_blocks(X, Z, block=3, scale=scale)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("block", [3, 4, 10, 64])
def test_device_blocks_equal_host_blocks(block):
    # The GPU path (X and Z on device, one slab per block) checked on CPU; the last,
    # shorter block is trimmed from a full-width slab.
    X, Z = _xz(m=15, n=10)
    want = enhanced_matrix(X, Z, device=False)
    got = enhanced_matrix(X, Z, block=block, device=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    got = np.concatenate([E for _, E in enhanced_blocks(X, Z, block=block, scale=True, device=True)])
    minmax_scale(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("slab_entries", [1 << 26, 100, 1])
def test_device_blocks_with_bcoo_x_in_narrow_slabs(monkeypatch, slab_entries):
    # X over the dense limit goes to the device as BCOO; each block is then computed in
    # slabs whose gather temporary (stored entries x slab width) stays within the budget.
    from sccase_jax import output, problem

    monkeypatch.setattr(problem, "dense_limit", lambda dtype: 0)
    monkeypatch.setattr(output, "BCOO_SLAB_ENTRIES", slab_entries)
    X, Z = _xz(m=15, n=10)
    want = enhanced_matrix(X, Z, device=False)
    for block in (3, 4, 10):
        got = enhanced_matrix(X, Z, block=block, device=True)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_written_layer_reads_back(tmp_path):
    X, Z = _xz()
    adata = ad.AnnData(X=sp.csr_matrix(X.T))
    adata.obsp["Z"] = Z
    path = str(tmp_path / "out.h5ad")
    write_enhanced_h5ad(adata, path, X, Z, key="sccase", block=4)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.layers["sccase"], enhanced_matrix(X, Z), rtol=1e-6)
    np.testing.assert_allclose(back.obsp["Z"], Z)
    with h5py.File(path) as f:
        assert f["layers/sccase"].attrs["encoding-type"] == "array"
        assert f["layers/sccase"].chunks[0] <= 4
    backed = ad.read_h5ad(path, backed="r")
    np.testing.assert_allclose(backed.layers["sccase"][2:5], enhanced_matrix(X, Z)[2:5], rtol=1e-6)
    backed.file.close()


def test_refuses_wrong_shape_and_existing_layer(tmp_path):
    X, Z = _xz()
    with pytest.raises(ValueError, match="expected"):
        write_enhanced_h5ad(ad.AnnData(X=sp.csr_matrix(X)), str(tmp_path / "a.h5ad"), X, Z)
    a = ad.AnnData(X=sp.csr_matrix(X.T))
    a.layers["sccase"] = np.zeros(a.shape)
    with pytest.raises(ValueError, match="already"):
        write_enhanced_h5ad(a, str(tmp_path / "b.h5ad"), X, Z)


def _counts(seed=0, cells=30, peaks=60):
    rng = np.random.default_rng(seed)
    C = (rng.random((cells, peaks)) < 0.25) * rng.integers(1, 3, (cells, peaks))
    return ad.AnnData(X=sp.csr_matrix(C.astype(np.float32)))


@pytest.mark.parametrize("output,neighbors", [("blend", "auto"), ("xz", "auto"), ("blend", 5)])
def test_enhance_out_file_and_cli_out_of_core_match_in_memory(tmp_path, output, neighbors):
    adata = _counts()
    kw = dict(n_components=3, max_iter=3, nmf_iter=5, output=output, neighbors=neighbors)
    mem = enhance(adata, **kw)
    path = str(tmp_path / "ooc.h5ad")
    lean = enhance(adata, out_file=path, block=7, **kw)
    assert "sccase" not in lean.layers
    disk = ad.read_h5ad(path)
    np.testing.assert_allclose(disk.layers["sccase"], mem.layers["sccase"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dense(disk.obsp["sccase_Z"]), dense(mem.obsp["sccase_Z"]))

    inp, out = str(tmp_path / "in.h5ad"), str(tmp_path / "cli.h5ad")
    adata.write_h5ad(inp)
    assert cli.main(["enhance", inp, out, "--k", "3", "--max-iter", "3", "--output-type", output,
                     "--out-of-core", "--quiet"]) == 0
    got = ad.read_h5ad(out)
    assert got.layers["sccase"].shape == (30, got.n_vars)
    assert got.uns["sccase"]["params"]["output"] == output
    assert not list(tmp_path.glob("*.part"))
