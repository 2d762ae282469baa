"""Small real datasets bundled with the package (no download needed)."""

from __future__ import annotations

from importlib import resources

__all__ = ["granja_bm600", "path"]


def path(name: str = "granja2019_bm600.h5ad") -> str:
    """Filesystem path of a bundled data file."""
    return str(resources.files("sccase_jax").joinpath("data", name))


def granja_bm600():
    """Granja et al. 2019 bone marrow scATAC-seq, 600 cells x 5,000 peaks, 6 cell types.

    Raw read counts (cells x peaks, sparse), ``obs["cell_type"]`` the authors' labels
    (100 cells each), peaks named ``chr:start-end`` (hg19) with chr/start/end columns.
    Taken from the epiCHAOS example data (MIT licence); not one of the paper's datasets.
    """
    import anndata as ad

    return ad.read_h5ad(path())
