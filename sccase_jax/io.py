"""Everything that reads or writes files: outputs checked before any work, written atomically.

Outputs.  :func:`check_out_file` checks an output path before any work (an ``.h5ad`` name,
in a directory where a file can really be created, not the input or the reference under
any alias, not an existing file unless overwriting is asked for).  Every file is written
under a temporary name beside its target and renamed when complete
(:func:`atomic_output`, :func:`write_h5ad_atomic`), so a failure or an interrupt never
leaves a partial file behind that reads back as a valid result.

Inputs.  :func:`read_h5ad` reads an ``.h5ad`` file with one-line errors naming it.

Large enhanced layers.  For large data the dense cells x peaks result does not fit in
memory (10k cells x 100k peaks is 4 GB in float32).  :func:`write_layer_h5ad` writes the
AnnData without that layer, then creates ``layers/<key>`` with h5py in anndata's on-disk
format (a dense array: ``encoding-type = "array"``, ``encoding-version = "0.2.0"``) and
fills it from an :class:`~sccase_jax.implicit.EnhancedMatrix` block by block, so only one
block of the result exists in memory at once (:func:`write_enhanced_h5ad`: the same from
X and the weights).  ``anndata.read_h5ad`` reads the file back as usual (also
``backed="r"``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import h5py
import numpy as np
import scipy.sparse as sp

from sccase_jax.validate import InputError, check_int

__all__ = [
    "OutputError",
    "array_bytes",
    "atomic_output",
    "check_out_file",
    "discard_temporaries",
    "file_mode",
    "format_bytes",
    "h5ad_bytes",
    "read_h5ad",
    "same_file",
    "source_file",
    "write_enhanced_h5ad",
    "write_h5ad_atomic",
    "write_layer_h5ad",
]

# Suffixes accepted for an output file: ``.h5ad``, and ``.h5ad.part`` for a temporary name
# that the caller renames itself (the command line's out-of-core path).
OUT_SUFFIXES = (".h5ad", ".h5ad.part")


def write_enhanced_h5ad(adata, path: str, X, Z, *, key: str = "sccase", block: int = 1024,
                        scale: bool = False, dtype=np.float32, device: bool | None = None) -> None:
    """Write ``adata`` to ``path`` with ``layers[key] = (X Z)^T`` added block by block.

    ``adata`` must not already hold ``layers[key]``; its shape must be cells x peaks with
    ``X`` peaks x cells and ``Z`` the cells x cells weights (dense or scipy sparse).  With
    ``scale`` the layer is min-max scaled per peak then per cell (two more passes of
    products collect the ranges).  ``dtype`` is the layer's (float32 or float16).  The file
    is written under a temporary name beside ``path`` (through a symlink: beside its
    target) and renamed to it only when complete (:func:`atomic_output`); on any failure
    the temporary file is removed and ``path`` is left as it was.
    """
    from sccase_jax.implicit import EnhancedMatrix

    block = check_int("block", block, 1, integral_float=False)
    enh = EnhancedMatrix(X, Z, dtype=dtype)
    if scale:
        enh = enh.with_scaling(block)
    write_layer_h5ad(adata, path, enh, key=key, block=block, device=device)


def write_layer_h5ad(adata, path: str, enh, *, key: str = "sccase", block: int = 1024,
                     device: bool | None = None, progress=None) -> None:
    """Write ``adata`` to ``path`` with ``layers[key]`` filled from ``enh`` block by block.

    ``enh`` is a :class:`~sccase_jax.implicit.EnhancedMatrix` (or a view of it) of
    ``adata``'s shape; only one block of it is in memory at a time.  The dataset is created
    with h5py in anndata's on-disk format (a dense array: ``encoding-type = "array"``,
    ``encoding-version = "0.2.0"``), chunked by cell blocks and not compressed, so blocks
    write at disk speed; ``anndata.read_h5ad`` reads it back as usual (also
    ``backed="r"``).  Written atomically (:func:`atomic_output`); ``progress(done, total)``
    is called after each block.
    """
    block = check_int("block", block, 1, integral_float=False)
    n, m = enh.shape
    if adata.shape != (n, m):
        raise ValueError(f"adata is {adata.shape}, expected (cells, peaks) = {(n, m)}")
    if key in adata.layers:
        raise ValueError(f"adata already has layers[{key!r}]")
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "r+") as f:
            layers = f.require_group("layers")
            layers.attrs.setdefault("encoding-type", "dict")
            layers.attrs.setdefault("encoding-version", "0.1.0")
            rows = max(1, min(n, block, (1 << 22) // max(m, 1)))  # chunks of at most 16 MB
            ds = layers.create_dataset(key, shape=(n, m), dtype=enh.dtype,
                                       chunks=(rows, m) if n and m else None)
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
            for j, E in enh.blocks(block, device=device, progress=progress):
                ds[j : j + E.shape[0]] = E


def write_h5ad_atomic(adata, path: str) -> None:
    """``adata.write_h5ad`` under a temporary name beside ``path``, renamed when complete.

    No partial file is ever left at ``path`` (:func:`atomic_output`); an ``OSError`` of the
    write (disk full, permissions) is an :class:`OutputError` naming ``path``.
    """
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)


def read_h5ad(path, what: str = "input"):
    """Read an .h5ad file; ``what`` names it in errors ("input", "reference")."""
    import anndata as ad

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"{what} is a directory, not an .h5ad file: {path}")
    if not path.endswith(".h5ad"):
        raise InputError(f"{what} must be an .h5ad file: {path}")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a corrupt file
        raise InputError(f"cannot read {what} {path} as an .h5ad file "
                         f"({type(exc).__name__}: {exc})") from None


# -- Output paths: checked before any work, written atomically --------------------------------

class OutputError(InputError):
    """An output that cannot be written (one line, naming the user's path)."""


# Temporary files being written now; removed by discard_temporaries() (the command line
# calls it when interrupted, before it exits without unwinding).
_TEMPORARIES: set[str] = set()


def same_file(a, b) -> bool:
    """Whether two paths name the same file, through symlinks, ``..`` and hard links."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def source_file(adata) -> str | None:
    """The file behind a backed AnnData (``read_h5ad(..., backed="r")``), else None.

    An AnnData read into memory keeps no record of its file: guarding such an input from
    being overwritten is :func:`check_out_file`'s ``overwrite=False``.
    """
    if adata is None or not getattr(adata, "isbacked", False):
        return None
    name = getattr(adata, "filename", None)
    return None if name is None else os.fspath(name)


def file_mode() -> int:
    """The mode a newly created file gets under the current umask (``0o666 & ~umask``)."""
    old = os.umask(0o022)  # there is no way to read the umask without setting it
    os.umask(old)
    return 0o666 & ~old


def _probe(parent: str) -> None:
    """Create and remove a file in ``parent``: the only sure test of writability (``os.access``
    says yes for /proc and /sys, and for anything when running as root)."""
    fd, tmp = tempfile.mkstemp(prefix=".sccase-probe-", dir=parent)
    os.close(fd)
    os.remove(tmp)


def check_out_file(path, *, protect=(), overwrite: bool = True, what: str = "out_file") -> str:
    """Check an output path before any work is done; return it as a ``str``.

    It must be a ``str`` or path-like ending in ``.h5ad`` (``.h5ad.part`` is accepted for a
    temporary name the caller renames), not a directory, in an existing directory where a
    file can really be created (tried), and not name any of the files in ``protect`` (the
    input, the reference) under any alias (symlink, ``..``, hard link).  An existing file
    is refused unless ``overwrite``.  ``what`` names the path in messages (``"out_file"``,
    ``"output"``).  Raises :class:`OutputError` (an :class:`~sccase_jax.validate.InputError`).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise OutputError(f"{what} must be a path (str or os.PathLike), got {path!r}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise OutputError(f"{what} must be a str path, got {path!r}")
    base = os.path.basename(path)
    if not base.endswith(OUT_SUFFIXES) or base in OUT_SUFFIXES:
        raise OutputError(f"{what} must be an .h5ad file name, got {path!r}")
    for role, src in protect:
        if src is not None and same_file(src, path):
            raise OutputError(f"{what} {path} is the {role} file {os.fspath(src)}; the {role} is "
                              "never overwritten")
    target = os.path.realpath(path)  # a symlink is written through to its target
    if os.path.isdir(target):
        raise OutputError(f"{what} is a directory: {path!r}")
    parent = os.path.dirname(target)
    if not os.path.exists(parent):
        raise OutputError(f"{what} directory does not exist: {parent!r}")
    if not os.path.isdir(parent):
        raise OutputError(f"{what} {path!r}: {parent!r} is not a directory")
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{what} {path} exists; pass overwrite=True to replace it")
    try:
        _probe(parent)
    except OSError as exc:
        raise OutputError(f"{what} directory is not writable: {parent!r} "
                          f"({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def atomic_output(path):
    """Yield a fresh temporary name beside ``path``; rename it to ``path`` on success.

    The temporary file is created exclusively in the directory of ``path``'s target (a
    symlink is written through), so the final rename is atomic; it gets the mode of a
    normally created file (:func:`file_mode`).  On any failure it is removed and ``path``
    is left as it was; an ``OSError`` becomes an :class:`OutputError` naming ``path``.
    """
    path = os.fspath(path)
    target = os.path.realpath(path)
    try:
        stem = os.path.basename(target).removesuffix(".part").removesuffix(".h5ad")
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".h5ad.part",
                                   dir=os.path.dirname(target))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    _TEMPORARIES.add(tmp)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc}") from None
        raise
    finally:
        _TEMPORARIES.discard(tmp)


def discard_temporaries() -> None:
    """Remove every temporary output file still being written (on an interrupt)."""
    for tmp in list(_TEMPORARIES):
        with contextlib.suppress(OSError):
            os.remove(tmp)
        _TEMPORARIES.discard(tmp)


def array_bytes(a) -> int:
    """Bytes of the data of an array, sparse matrix or nested dict/list of them."""
    if a is None:
        return 0
    if sp.issparse(a):
        return int(a.data.nbytes + a.indices.nbytes + a.indptr.nbytes)
    if hasattr(a, "nbytes"):
        return int(a.nbytes)
    if isinstance(a, dict):
        return sum(array_bytes(v) for v in a.values())
    if isinstance(a, (list, tuple)):
        return sum(array_bytes(v) for v in a)
    return 16


def h5ad_bytes(adata, extra_layer=None) -> int:
    """About how many bytes ``adata.write_h5ad`` writes (uncompressed array data).

    ``extra_layer = (shape, dtype)`` adds a dense layer written separately (the
    out-of-core path).  Frames and ``uns`` are counted roughly; arrays exactly.
    """
    total = array_bytes(adata.X)
    for group in (adata.layers, adata.obsm, adata.varm, adata.obsp, adata.varp):
        total += sum(array_bytes(group[k]) for k in group.keys())
    for frame in (adata.obs, adata.var):
        total += int(frame.memory_usage(deep=True).sum())
    total += array_bytes(dict(adata.uns))
    if extra_layer is not None:
        shape, dtype = extra_layer
        total += int(np.prod(shape)) * np.dtype(dtype).itemsize
    return total


def format_bytes(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as file managers show them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"
