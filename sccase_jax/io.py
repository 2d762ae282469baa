"""Write the enhanced matrix ``(X Z)^T`` into an .h5ad file cell block by cell block.

For large data the dense cells x peaks result does not fit in memory (10k cells x 100k
peaks is 4 GB in float32).  :func:`write_enhanced_h5ad` writes the AnnData without that
layer, then creates ``layers/<key>`` with h5py in anndata's on-disk format (a dense array:
``encoding-type = "array"``, ``encoding-version = "0.2.0"``) and fills it ``block`` cells
at a time, so only one block of the result exists in memory at once.  ``anndata.read_h5ad``
reads the file back as usual (also ``backed="r"``).  The file is written under a temporary
name beside ``path`` and renamed when complete, so a failure never leaves a file behind
that reads back as a valid result.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import h5py
import numpy as np
import scipy.sparse as sp

from sccase_jax.api import InputError, check_int

__all__ = ["block_product", "check_out_file", "enhanced_blocks", "write_enhanced_h5ad"]

# Suffixes accepted for an output file: ``.h5ad``, and ``.h5ad.part`` for a temporary name
# that the caller renames itself (the command line's out-of-core path).
OUT_SUFFIXES = (".h5ad", ".h5ad.part")


# Most entries of the nse x block temporary of one BCOO slab product (block_product).
BCOO_SLAB_ENTRIES = 1 << 26


def block_product(X, Z, block: int = 1024, dtype=np.float32, device: bool | None = None):
    """A function ``raw(j)`` giving rows ``j:j+block`` of ``(X Z)^T`` (cells x peaks).

    On the host (``device=False``) X stays scipy sparse and each block is one sparse x dense
    product.  On device (``device=True``; default on a GPU or TPU) X and Z are copied to the
    device once (X dense up to :func:`~sccase_jax.api.dense_limit` entries, else ``BCOO``)
    and each block is one true-float32 product there, so at most one m x ``block`` slab of
    the result is in device memory.  ``block`` must be a positive integer.
    """
    block = check_int("block", block, 1, integral_float=False)
    if device is None:
        import jax

        device = jax.default_backend() != "cpu"
    if not device:
        X = X.tocsr() if sp.issparse(X) else np.asarray(X)
        Z = np.asarray(Z)

        def raw(j):
            return np.asarray(X @ Z[:, j : j + block]).T.astype(dtype, copy=False)

        return raw
    import jax
    import jax.numpy as jnp

    from sccase_jax.api import device_matrix

    Zd = jnp.asarray(Z)
    Xd = device_matrix(X, Zd.dtype, "auto")
    n = Zd.shape[1]
    width = block
    nse = getattr(Xd, "nse", 0)
    if nse:
        # A BCOO X times a dense slab gathers one slab row per stored entry (an nse x width
        # temporary): a block is then computed in slabs narrow enough to keep that within
        # BCOO_SLAB_ENTRIES.
        width = max(1, min(block, BCOO_SLAB_ENTRIES // nse))

    @jax.jit
    def prod(Xd, Zd, j):
        with jax.default_matmul_precision("highest"):
            b = min(width, Zd.shape[1])
            return (Xd @ jax.lax.dynamic_slice_in_dim(Zd, j, b, axis=1)).T

    def raw(j):
        # A slab that would run past the last cell is taken as the final full-width slab and
        # trimmed on the host, so one program serves every slab.
        stop = min(j + block, n)
        parts = []
        for i in range(j, stop, width):
            start = min(i, max(n - width, 0))
            E = np.asarray(prod(Xd, Zd, start))
            parts.append(E[i - start : i - start + min(width, stop - i)])
        E = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return E.astype(dtype, copy=False)

    return raw


def enhanced_blocks(X, Z, block: int = 1024, dtype=np.float32, scale: bool = False,
                    device: bool | None = None):
    """Yield ``(start, E_block)``: rows ``start:start+b`` of ``(X Z)^T`` (cells x peaks).

    ``X`` is peaks x cells (scipy sparse or dense), ``Z`` cells x cells.  With ``scale``
    each block is min-max scaled per peak (over all cells: a first pass collects the
    per-peak minimum and maximum) and then per cell, as the released code does.
    ``device``: where the block products run (:func:`block_product`).
    """
    m, n = X.shape
    raw = block_product(X, Z, block, dtype, device)

    if scale:
        lo = np.full(m, np.inf, dtype)
        hi = np.full(m, -np.inf, dtype)
        for j in range(0, n, block):
            E = raw(j)
            np.minimum(lo, E.min(axis=0), out=lo)
            np.maximum(hi, E.max(axis=0), out=hi)
        span = hi - lo
        span[span <= 0] = 1
    for j in range(0, n, block):
        E = raw(j)
        if scale:
            E -= lo
            E /= span
            rlo = E.min(axis=1, keepdims=True)
            rspan = E.max(axis=1, keepdims=True) - rlo
            E -= rlo
            E /= np.where(rspan > 0, rspan, 1)
        yield j, E


def write_enhanced_h5ad(adata, path: str, X, Z, *, key: str = "sccase", block: int = 1024,
                        scale: bool = False, dtype=np.float32, device: bool | None = None) -> None:
    """Write ``adata`` to ``path`` with ``layers[key] = (X Z)^T`` added block by block.

    ``adata`` must not already hold ``layers[key]``; its shape must be cells x peaks with
    ``X`` peaks x cells.  The dataset is chunked by cell blocks (and compressed with none,
    so blocks write at disk speed).  The file is written under a temporary name in the
    directory of ``path`` and renamed to ``path`` only when complete; on any failure the
    temporary file is removed and ``path`` is left as it was.
    """
    block = check_int("block", block, 1, integral_float=False)
    m, n = X.shape
    if adata.shape != (n, m):
        raise ValueError(f"adata is {adata.shape}, expected (cells, peaks) = {(n, m)}")
    if key in adata.layers:
        raise ValueError(f"adata already has layers[{key!r}]")
    path = os.fspath(path)
    tmp = _temporary_name(path)
    try:
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "r+") as f:
            layers = f.require_group("layers")
            layers.attrs.setdefault("encoding-type", "dict")
            layers.attrs.setdefault("encoding-version", "0.1.0")
            rows = max(1, min(n, block, (1 << 22) // max(m, 1)))  # chunks of at most 16 MB
            ds = layers.create_dataset(key, shape=(n, m), dtype=dtype,
                                       chunks=(rows, m) if n and m else None)
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
            for j, E in enhanced_blocks(X, Z, block, dtype, scale, device):
                ds[j : j + E.shape[0]] = E
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _temporary_name(path: str) -> str:
    """A fresh name beside ``path`` (same directory, so that the final rename is atomic)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f"{tail}.{uuid.uuid4().hex[:12]}.part")


def check_out_file(path) -> str:
    """Check an output path before any work is done; return it as a ``str``.

    It must be a ``str`` or path-like ending in ``.h5ad`` (``.h5ad.part`` is accepted for a
    temporary name the caller renames), in an existing, writable directory, and not be a
    directory itself.  Raises :class:`~sccase_jax.api.InputError`.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"out_file must be a path (str or os.PathLike), got {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise InputError(f"out_file must be a str path, got {path!r}")
    if not os.path.basename(path).endswith(OUT_SUFFIXES) or os.path.basename(path) == ".h5ad":
        raise InputError(f"out_file must be an .h5ad file name, got {path!r}")
    if os.path.isdir(path):
        raise InputError(f"out_file is a directory: {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise InputError(f"the directory of out_file does not exist: {parent!r}")
    if not os.path.isdir(parent):
        raise InputError(f"the directory of out_file is not a directory: {parent!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"the directory of out_file is not writable: {parent!r}")
    return path
