"""Inputs users have (Cell Ranger .h5 and matrix-market folders, fragments + peaks, SnapATAC2's
compressed .h5ad, MuData): each written here in its real layout from one set of simulated
fragments, read back as the same counts, and enhanced by the command line exactly as the
same counts given as an .h5ad."""

import gzip
import subprocess
import sys

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

import sccase_jax
from sccase_jax import cli, readers
from sccase_jax.validate import InputError

N_CELLS, N_PEAKS = 45, 60
ENHANCE = ["--k", "3", "--max-iter", "2", "--seed", "0", "--quiet"]


def _peaks():
    chrom = np.where(np.arange(N_PEAKS) < 40, "chr1", "chr2")
    start = 10_000 + 2_000 * (np.arange(N_PEAKS) % 40)
    return pd.DataFrame({"chrom": chrom, "start": start, "end": start + 500})


@pytest.fixture(scope="module")
def truth():
    """Fragments of three groups of cells and their cut-site counts in the peaks, counted
    here by hand: both ends of a fragment inside a peak count 2, one end 1 (every end lies
    at least 20 bp from a peak boundary, so no convention of ends can change a count)."""
    rng = np.random.default_rng(0)
    peaks = _peaks()
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(N_CELLS)]
    counts = np.zeros((N_CELLS, N_PEAKS), np.int64)
    frags = []
    for c, bc in enumerate(barcodes):
        open_ = np.full(N_PEAKS, 0.08)
        open_[(c % 3) * 20 : (c % 3) * 20 + 20] = 0.6
        for p in np.flatnonzero(rng.random(N_PEAKS) < open_):
            s = int(peaks.start[p])
            for _ in range(int(rng.integers(1, 3))):
                a = s + int(rng.integers(20, 300))
                if rng.random() < 0.7:  # both ends inside
                    b = a + int(rng.integers(30, 150))
                    counts[c, p] += 2
                else:  # the end in the gap after the peak
                    b = s + 500 + int(rng.integers(30, 600))
                    counts[c, p] += 1
                frags.append((peaks.chrom[p], a, b, bc))
        frags.append(("chr1", 5_000 + c, 5_100 + c, bc))  # before the first peak: counts 0
    frags.append(("chr1", 12_100, 12_200, "TTTTTTTTTTTTTTTT-1"))  # not a cell (not in barcodes)
    frags = pd.DataFrame(frags, columns=["chrom", "start", "end", "barcode"])
    frags = frags.drop_duplicates().sort_values(["chrom", "start", "end"]).reset_index(drop=True)
    names = (peaks.chrom + ":" + peaks.start.astype(str) + "-" + peaks.end.astype(str)).to_numpy()
    return dict(peaks=peaks, names=names, barcodes=np.array(barcodes), counts=counts, frags=frags)


def _write_fragments(truth, path):
    with gzip.open(path, "wt") as fh:
        fh.write("# id=test\n# reference_path=/refs/GRCh38\n")
        for r in truth["frags"].itertuples():
            fh.write(f"{r.chrom}\t{r.start}\t{r.end}\t{r.barcode}\t1\n")


def _write_bed(truth, path):
    truth["peaks"].to_csv(path, sep="\t", header=False, index=False)


def _write_10x_h5(truth, path, arc: bool = False):
    """Cell Ranger's layout: /matrix holds features x barcodes in CSC (indptr by barcode)."""
    M = sp.csc_matrix(truth["counts"].T.astype(np.int32))
    ids = list(truth["names"])
    types = ["Peaks"] * N_PEAKS
    if arc:  # ARC: Gene Expression features first, then the peaks
        genes = sp.csc_matrix(np.ones((3, N_CELLS), np.int32))
        M = sp.vstack([genes, M]).tocsc()
        ids = ["ENSG1", "ENSG2", "ENSG3"] + ids
        types = ["Gene Expression"] * 3 + types
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(truth["barcodes"], dtype="S")
        g["data"], g["indices"], g["indptr"] = M.data, M.indices.astype(np.uint32), M.indptr.astype(np.uint32)
        g["shape"] = np.array(M.shape, np.uint32)
        fg = g.create_group("features")
        fg["id"] = fg["name"] = np.array(ids, dtype="S")
        fg["feature_type"] = np.array(types, dtype="S")
        fg["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
        if arc:
            fg["interval"] = np.array(["chr1:1-2"] * 3 + list(truth["names"]), dtype="S")
        fg["_all_tag_keys"] = np.array([b"genome"] + ([b"interval"] if arc else []))


def _write_mtx(truth, folder, arc: bool = False):
    folder.mkdir()
    M = sp.coo_matrix(truth["counts"].T)
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, M if not arc else sp.vstack([sp.coo_matrix(np.ones((2, N_CELLS))), M]),
                         field="integer")
    if arc:
        rows = [("ENSG1", "G1", "Gene Expression", "chr1", "1", "2"),
                ("ENSG2", "G2", "Gene Expression", "chr1", "3", "4")]
        p = truth["peaks"]
        rows += [(n, n, "Peaks", c, str(s), str(e)) for n, c, s, e in zip(truth["names"], p.chrom, p.start, p.end)]
        with gzip.open(folder / "features.tsv.gz", "wt") as fh:
            fh.writelines("\t".join(r) + "\n" for r in rows)
        with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
            fh.writelines(b + "\n" for b in truth["barcodes"])
    else:
        _write_bed(truth, folder / "peaks.bed")
        (folder / "barcodes.tsv").write_text("".join(b + "\n" for b in truth["barcodes"]))


def _expected(truth, order=None):
    a = ad.AnnData(X=sp.csr_matrix(truth["counts"], dtype=np.float32),
                   obs=pd.DataFrame(index=truth["barcodes"]), var=pd.DataFrame(index=truth["names"]))
    return a if order is None else a[order].copy()


def _same_counts(got, want):
    assert list(got.var_names) == list(want.var_names)
    got = got[list(want.obs_names)] if set(got.obs_names) == set(want.obs_names) else got
    assert list(got.obs_names) == list(want.obs_names)
    np.testing.assert_array_equal(sp.csr_matrix(got.X).toarray(), want.X.toarray())


@pytest.fixture(scope="module")
def files(truth, tmp_path_factory):
    d = tmp_path_factory.mktemp("tenx")
    _write_10x_h5(truth, d / "filtered_peak_bc_matrix.h5")
    _write_10x_h5(truth, d / "filtered_feature_bc_matrix.h5", arc=True)
    _write_mtx(truth, d / "filtered_peak_bc_matrix")
    _write_mtx(truth, d / "arc_mtx", arc=True)
    _write_fragments(truth, d / "fragments.tsv.gz")
    _write_bed(truth, d / "peaks.bed")
    (d / "barcodes.tsv").write_text("".join(b + "\n" for b in truth["barcodes"]))
    return d


@pytest.mark.parametrize("name,fmt", [("filtered_peak_bc_matrix.h5", "10x_h5"),
                                      ("filtered_feature_bc_matrix.h5", "10x_h5"),
                                      ("filtered_peak_bc_matrix", "10x_mtx"),
                                      ("filtered_peak_bc_matrix/matrix.mtx.gz", "10x_mtx"),
                                      ("arc_mtx", "10x_mtx")])
def test_cell_ranger_layouts_read_as_the_same_counts(truth, files, name, fmt):
    a = sccase_jax.read(files / name)
    assert a.uns["sccase_input"]["format"] == fmt and "cut sites" in a.uns["sccase_input"]["values"]
    _same_counts(a, _expected(truth))
    assert a.X.dtype == np.float32 and sp.isspmatrix_csr(a.X)
    np.testing.assert_array_equal(a.var["chrom"].astype(str), truth["peaks"].chrom)
    np.testing.assert_array_equal(a.var["start"], truth["peaks"].start)
    np.testing.assert_array_equal(a.var["end"], truth["peaks"].end)


def test_fragments_are_counted_as_cut_sites(truth, files):
    a = sccase_jax.read(files / "fragments.tsv.gz", peaks=files / "peaks.bed",
                        barcodes=files / "barcodes.tsv")
    assert a.uns["sccase_input"]["format"] == "fragments"
    _same_counts(a, _expected(truth))
    # without barcodes, every barcode with at least min_fragments fragments
    b = sccase_jax.read(files / "fragments.tsv.gz", peaks=files / "peaks.bed", min_fragments=0)
    assert b.n_obs == N_CELLS + 1 and "TTTTTTTTTTTTTTTT-1" in b.obs_names
    # other countings: a fragment with both ends in one peak counts once
    c = sccase_jax.read(files / "fragments.tsv.gz", peaks=files / "peaks.bed",
                        barcodes=files / "barcodes.tsv", counting="paired-insertion")
    c = c[list(truth["barcodes"])]
    assert (c.X.toarray() <= truth["counts"]).all() and c.X.sum() < truth["counts"].sum()


def test_snapatac2_compressed_h5ad(truth, files, tmp_path):
    snap = pytest.importorskip("snapatac2")
    sizes = {"chr1": 10**8, "chr2": 10**8}
    frags = snap.pp.import_fragments(str(files / "fragments.tsv.gz"), chrom_sizes=sizes,
                                     min_num_fragments=0, sorted_by_barcode=False,
                                     whitelist=list(truth["barcodes"]), file=str(tmp_path / "f.h5ad"))
    pm = snap.pp.make_peak_matrix(frags, use_rep=list(truth["names"]), counting_strategy="insertion",
                                  file=str(tmp_path / "snap.h5ad"))
    pm.close()
    frags.close()
    with h5py.File(tmp_path / "snap.h5ad") as f:  # written with HDF5 filter plugins
        assert f["X/data"]._filters
    a = sccase_jax.read(tmp_path / "snap.h5ad")
    _same_counts(a, _expected(truth))
    # without hdf5plugin: one line saying what to install
    code = ("import sys; sys.modules['hdf5plugin'] = None\n"
            "import sccase_jax\n"
            f"try:\n    sccase_jax.read({str(tmp_path / 'snap.h5ad')!r})\n"
            "except sccase_jax.InputError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install hdf5plugin" in r.stdout, r.stderr[-2000:]


@pytest.mark.filterwarnings("ignore:From 0.4 .update():FutureWarning")
def test_mudata_atac_modality(truth, tmp_path):
    mudata = pytest.importorskip("mudata")
    atac = _expected(truth)
    rna = ad.AnnData(X=np.ones((N_CELLS, 4), np.float32), obs=pd.DataFrame(index=truth["barcodes"]))
    mudata.MuData({"rna": rna, "atac": atac}).write(tmp_path / "x.h5mu")
    _same_counts(sccase_jax.read(tmp_path / "x.h5mu"), atac)
    with pytest.raises(InputError, match=r"no 'peaks' modality \(modalities: atac, rna\)"):
        sccase_jax.read(tmp_path / "x.h5mu", modality="peaks")


def test_one_line_errors(truth, files, tmp_path, monkeypatch):
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(InputError, match="must be an .h5ad file or another supported input"):
        sccase_jax.read(tmp_path / "x.txt")
    with pytest.raises(InputError, match="needs a peaks BED"):
        sccase_jax.read(files / "fragments.tsv.gz")
    with pytest.raises(InputError, match="peaks and barcodes are for a fragments file"):
        sccase_jax.read(files / "filtered_peak_bc_matrix.h5", peaks=files / "peaks.bed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="directory without matrix.mtx"):
        sccase_jax.read(tmp_path / "empty")
    gex = dict(truth, names=np.array([f"G{i}" for i in range(N_PEAKS)]))
    _write_10x_h5(gex, tmp_path / "gex.h5")
    with h5py.File(tmp_path / "gex.h5", "r+") as f:
        del f["matrix/features/feature_type"]
        f["matrix/features/feature_type"] = np.array([b"Gene Expression"] * N_PEAKS)
    with pytest.raises(InputError, match="holds no Peaks features .*Gene Expression"):
        sccase_jax.read(tmp_path / "gex.h5")
    (tmp_path / "bad.bed").write_text("chr1\tx\t5\n")
    with pytest.raises(InputError, match="line 1: not a BED record"):
        sccase_jax.read(files / "fragments.tsv.gz", peaks=tmp_path / "bad.bed")
    monkeypatch.setitem(sys.modules, "snapatac2", None)  # an optional extra that is missing
    with pytest.raises(InputError, match="needs snapatac2: pip install snapatac2"):
        sccase_jax.read(files / "fragments.tsv.gz", peaks=files / "peaks.bed")


def _cli_layer(inp, out, *extra):
    code = cli.main(["enhance", str(inp), str(out), *ENHANCE, *extra])
    assert code == 0
    return ad.read_h5ad(out)


@pytest.mark.parametrize("name", ["filtered_peak_bc_matrix.h5", "filtered_peak_bc_matrix",
                                  "fragments.tsv.gz"])
def test_cli_enhances_each_layout_as_the_h5ad(truth, files, tmp_path, name):
    extra = ["--peaks", str(files / "peaks.bed"), "--barcodes", str(files / "barcodes.tsv")] \
        if name.startswith("fragments") else []
    got = _cli_layer(files / name, tmp_path / "out.h5ad", *extra)
    want_in = _expected(truth, list(got.obs_names))  # the same cells in the reader's order
    want_in.write_h5ad(tmp_path / "in.h5ad")
    want = _cli_layer(tmp_path / "in.h5ad", tmp_path / "want.h5ad")
    np.testing.assert_array_equal(got.layers["sccase"], want.layers["sccase"])
    assert got.uns["sccase"]["input"]["format"] == readers.detect_format(files / name)
    assert {"chrom", "start", "end"} <= set(got.var.columns)


def test_cli_fragments_without_peaks_is_one_line(files, tmp_path, capsys):
    code = cli.main(["enhance", str(files / "fragments.tsv.gz"), str(tmp_path / "o.h5ad"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--peaks PEAKS.bed" in err
    assert not list(tmp_path.iterdir())
