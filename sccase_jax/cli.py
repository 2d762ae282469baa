"""``sccase-jax``: a thin command line over :func:`sccase_jax.enhance`.

Subcommands: ``enhance IN.h5ad OUT.h5ad``, ``demo``, ``evaluate``.  Bad input or usage ends
with a one-line ``sccase-jax: error: ...`` and exit status 2, never a traceback; numeric
options are checked when the arguments are parsed, before any file is read or written.

The output is written to a temporary file beside it, given the permissions of a newly
created file (``0o666 & ~umask``) and renamed over the output, so a failed run leaves no
partial file.  The output may not be the input (or the reference) under any alias (symlink,
``..``, hard link); an output that is a symlink is written through to its target.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

__all__ = ["main"]

DESCRIPTION = ("sccase-jax: enhance scATAC-seq counts (.h5ad) with scCASE, a thin command line "
               "over sccase_jax.enhance. Run 'sccase-jax COMMAND --help' for the options of "
               "each command.")

# Above this many cells x peaks (4 GB as float32) the enhanced layer is written block by block.
OUT_OF_CORE_ENTRIES = 1_000_000_000


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _read_h5ad(path: str, what: str = "input"):
    """Read an .h5ad file; ``what`` names it in errors ("input", "reference")."""
    import anndata as ad

    if not os.path.exists(path):
        raise CLIError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{what} is a directory, not an .h5ad file: {path}")
    if not path.endswith(".h5ad"):
        raise CLIError(f"{what} must be an .h5ad file: {path}")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a corrupt file
        raise CLIError(f"cannot read {what} {path} as an .h5ad file "
                       f"({type(exc).__name__}: {exc})") from None


def _check_output(out: str, inp: str | None = None, reference: str | None = None) -> str:
    """Check the output path before anything is read; return it.

    :func:`sccase_jax.io.check_out_file`: an ``.h5ad`` name in a directory where a file can
    really be created, never the input or the reference under any alias (symlink, ``..``,
    hard link).  An existing output is replaced; a symlink is written through to its target.
    """
    from sccase_jax.io import check_out_file

    return check_out_file(out, protect=(("input", inp), ("reference", reference)),
                          overwrite=True, what="output")


def write_h5ad_atomic(adata, out: str) -> None:
    """Write to a temporary file beside ``out`` and rename: no partial file is left.

    The file gets the permissions of a normally created file (``0o666 & ~umask``);
    :func:`sccase_jax.io.write_h5ad_atomic`, with its errors as :class:`CLIError`.
    """
    from sccase_jax import io

    try:
        io.write_h5ad_atomic(adata, out)
    except io.OutputError as exc:
        raise CLIError(str(exc)) from None


# argparse types: a bad value ends with one ``sccase-jax: error: ...`` line (exit status
# 2) before any file is read or written.  ``name`` is the API's name of the value, so that
# the message reads like the one :func:`sccase_jax.enhance` would give.

def int_at_least(name: str, low: int = 1, high: int | None = None, *, phrase: str | None = None):
    """argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < low or (high is not None and v > high):
            rng = phrase or (f">= {low}" if high is None else f"an integer in [{low}, {high}]")
            raise argparse.ArgumentTypeError(f"{name} must be {rng}, got {text}")
        return v

    parse.__name__ = "integer"
    return parse


def neighbors_arg(text: str):
    """argparse type of ``--neighbors``: a positive integer, ``auto`` or ``all``."""
    if text in ("auto", "all"):
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"neighbors must be a positive integer, 'auto' or 'all', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(
            f"neighbors must be a positive integer, 'auto' or 'all', got {text}")
    return v


neighbors_arg.__name__ = "neighbors"


def store_z_arg(text: str):
    """argparse type of ``--store-z``: ``auto``, ``full``, ``none`` or a positive integer."""
    if text in ("auto", "full", "none"):
        return text
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(
            f"store_z must be 'auto', 'full', 'none' or a positive integer, got {text!r}")
    return v


store_z_arg.__name__ = "store_z"


def number_in(name: str, low: float = 0.0, high: float | None = None, *, low_open: bool = False):
    """argparse type: a finite number ``>= low`` (``> low`` with ``low_open``), ``<= high``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not (math.isfinite(v) and (v > low if low_open else v >= low)
                and (high is None or v <= high)):
            if high is None:
                rng = f"a finite number {'>' if low_open else '>='} {low:g}"
            else:
                rng = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{name} must be {rng}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


def seed_type(name: str = "seed"):
    """argparse type: a seed, 0 to 2**32 - 1 (what NumPy and scikit-learn accept)."""
    return int_at_least(name, 0, 2**32 - 1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line ``sccase-jax: error: ...`` (exit status 2) for bad usage."""

    def error(self, message):
        root = self.prog.split()[0]
        self.exit(2, f"{root}: error: {message} (see '{self.prog} --help')\n")


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    from sccase_jax import api
    from sccase_jax.params import release_config

    release = release_config()
    default_tol = f"{api.DEFAULT_TOL:g}".replace("e-0", "e-")  # 1e-6
    p.add_argument("--k", type=int_at_least("n_components"), default=None,
                   help="number of components (default: estimated number of types + 1; with "
                        "--reference round(1.3 c), c at least the number of profiles)")
    p.add_argument("--lam", type=number_in("lam"), default=None,
                   help="weight of ||Z - H^T H||^2 (default 1e6; 1e5 with --reference)")
    p.add_argument("--gamma1", type=number_in("gamma1"), default=1.0,
                   help="ridge weight on W (default 1)")
    p.add_argument("--gamma2", type=number_in("gamma2"), default=1.0,
                   help="ridge weight on H (default 1)")
    p.add_argument("--keep-prob", type=number_in("keep_prob", 0.0, 1.0, low_open=True), default=0.95,
                   help="keep probability of the mask R, in (0, 1] (default 0.95)")
    # --tol and --max-iter default to None: passed on only when given, so that an explicit
    # value always wins over the preset's.
    p.add_argument("--tol", type=number_in("tol"), default=None,
                   help=f"relative change of F to stop at (default {default_tol}; {release.tol:g}, "
                        "i.e. run all iterations, with --preset release)")
    p.add_argument("--max-iter", type=int_at_least("max_iter", 0), default=None,
                   help=f"maximum iterations (default {api.DEFAULT_MAX_ITER}; {release.max_iter} "
                        "with --preset release)")
    p.add_argument("--seed", type=seed_type(), default=0,
                   help="random seed, 0 to 2**32 - 1 (mask R and NMF start; default 0)")
    p.add_argument("--layer", default=None, help="read counts from this layer instead of X")
    p.add_argument("--min-cells-frac", type=number_in("min_cells_frac", 0.0, 1.0), default=None,
                   help="drop peaks open in fewer than this fraction of cells "
                        "(default 0: only empty peaks; 0.01 with --preset release)")
    p.add_argument("--tfidf", choices=["paper", "l2"], default="l2",
                   help="TF-IDF variant (default l2; 'paper' is Eq. 1)")
    p.add_argument("--output-type", dest="output_type", choices=["blend", "xz"], default=None,
                   help="enhanced matrix: 'blend' = (1 - w) X + w X Zc (default), 'xz' = the "
                        "paper's X Z (default with --preset release)")
    p.add_argument("--blend", type=number_in("blend", 0.0, 1.0), default=0.8,
                   help="weight w of the Z-weighted cell average in --output-type blend (default 0.8)")
    p.add_argument("--scale-output", dest="scale_output", action="store_true", default=None,
                   help="min-max scale the output per peak then per cell (default for xz)")
    p.add_argument("--no-scale-output", dest="scale_output", action="store_false",
                   help="return the output unscaled (default for blend)")
    p.add_argument("--neighbors", type=neighbors_arg, default="auto", metavar="N|all",
                   help="keep only each cell's N largest weights in Z for the output; 'all' "
                        "keeps every cell (default: 300 for blend, all for xz; docs/results.md)")
    p.add_argument("--binarize", action="store_true", help="binarise counts before TF-IDF")
    p.add_argument("--drop-empty-cells", action="store_true",
                   help="remove cells with no counts after peak filtering")
    p.add_argument("--preset", choices=["paper", "release"], default="paper",
                   help="'release' reproduces sccase 0.2.5")
    p.add_argument("--reference", default=None, metavar="REF.h5ad",
                   help="scCASER: reference profiles x peaks (.h5ad); --k stays the total k")
    p.add_argument("--k-ref", type=int_at_least("k_ref"), default=None,
                   help="reference columns k1 (default min(profiles, k - 1))")
    p.add_argument("--alpha", type=number_in("alpha"), default=None,
                   help="pull of W1 towards P (default 1)")
    p.add_argument("--peak-match", choices=["auto", "name", "overlap"], default="auto",
                   help="match reference peaks by name or genomic overlap (default auto)")
    p.add_argument("--min-peak-match", type=number_in("min_peak_match", 0.0, 1.0), default=0.1,
                   help="refuse a reference matching fewer target peaks than this (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _fit_kwargs(args) -> dict:
    kwargs = dict(
        n_components=args.k,
        lam=args.lam,
        gamma1=args.gamma1,
        gamma2=args.gamma2,
        keep_prob=args.keep_prob,
        seed=args.seed,
        layer=args.layer,
        min_cells_frac=args.min_cells_frac,
        tfidf=args.tfidf,
        binarize=args.binarize,
        drop_empty_cells=args.drop_empty_cells,
        preset=args.preset,
        output=args.output_type,
        blend=args.blend,
        scale_output=args.scale_output,
        neighbors=args.neighbors,
        progress=not args.quiet,
        store_z=getattr(args, "store_z", "auto"),
        layer_dtype=getattr(args, "layer_dtype", "float32"),
        store_layer=getattr(args, "store_layer", True),
        k_ref=args.k_ref,
        alpha=args.alpha,
        peak_match=args.peak_match,
        min_peak_match=args.min_peak_match,
    )
    # Only when given: None leaves the preset's (or the package's) default in force.
    for name in ("tol", "max_iter"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def _log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def cmd_enhance(args) -> int:
    from sccase_jax import io
    from sccase_jax.tl import enhance

    if args.reference is None and (args.k_ref is not None or args.alpha is not None):
        raise CLIError("--k-ref and --alpha need --reference")
    out = _check_output(args.output, args.input, args.reference)
    adata = _read_h5ad(args.input)
    _log(args, f"read {args.input}: {adata.n_obs} cells x {adata.n_vars} peaks")
    kwargs = _fit_kwargs(args)
    if args.reference is not None:
        kwargs["reference"] = _read_h5ad(args.reference, "reference")
        _log(args, f"read {args.reference}: {kwargs['reference'].n_obs} reference profiles")
    out_of_core = args.out_of_core or adata.n_obs * adata.n_vars >= OUT_OF_CORE_ENTRIES
    with io.atomic_output(out) as tmp:
        if out_of_core and kwargs["store_layer"]:
            # Everything that can be checked without the fit has been; enhance writes the
            # file block by block under the temporary name, renamed when all is done.
            kwargs.update(out_file=tmp, overwrite=True)
            _log(args, "writing the enhanced layer block by block (out of core)")
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = enhance(adata, **kwargs)
        for w in caught:  # one line each, even with --quiet
            print(f"sccase-jax: warning: {w.message}", file=sys.stderr, flush=True)
        info = result.uns["sccase"]
        if "reference" in info:
            r = info["reference"]
            _log(args, f"reference: {r['n_matched']} of {r['n_target_peaks']} target peaks matched "
                       f"({r['frac_matched']:.1%}, by {r['match_method']}); k_ref = {r['k_ref']}")
        _log(args, f"fit: {info.get('message', info.get('status'))}; "
                   f"{time.perf_counter() - t0:.1f} s; {result.n_obs} cells x {result.n_vars} peaks kept")
        if "out_file" not in kwargs:
            _log(args, f"writing {out}: about {io.format_bytes(io.h5ad_bytes(result))}"
                       f" ({_size_parts(result)})")
            result.write_h5ad(tmp)
    _log(args, f"wrote {out}")
    return 0


def _size_parts(adata) -> str:
    """What makes up the written file, largest first: 'enhanced layer 72.0 MB float32, ...'."""
    from sccase_jax import io

    parts = []
    for name, group in (("layer", adata.layers), ("obsp", adata.obsp)):
        for key in group.keys():
            a = group[key]
            kind = "sparse" if hasattr(a, "indptr") else "dense"
            parts.append((io.array_bytes(a), f"{name} {key} {{}} {a.dtype} {kind}"))
    parts.append((io.array_bytes(adata.X), "counts {}"))
    parts.sort(key=lambda p: -p[0])
    return ", ".join(label.format(io.format_bytes(b)) for b, label in parts[:4])


def cmd_demo(args) -> int:
    from sccase_jax.demo import run_demo

    return run_demo(quiet=args.quiet, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="sccase-jax", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("enhance", help="enhance an .h5ad file (cells x peaks counts)")
    p.add_argument("input", help="input .h5ad (counts in X or --layer)")
    p.add_argument("output", help="output .h5ad")
    _add_fit_args(p)
    p.add_argument("--store-z", type=store_z_arg, default="auto", metavar="auto|full|none|N",
                   help="what obsp keeps of Z: 'auto' = the neighbours the output used (sparse; "
                        "the whole dense Z when it used every cell), N = each cell's N largest "
                        "weights, 'full' = dense n x n, 'none' (default auto)")
    p.add_argument("--layer-dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of the enhanced layer (float16: half the file size)")
    p.add_argument("--no-layer", dest="store_layer", action="store_false",
                   help="leave the enhanced layer out of the output (the largest part of it; "
                        "sccase_jax.tl.enhanced_layer recomputes it from the stored Z)")
    p.add_argument("--out-of-core", action="store_true",
                   help="write the enhanced layer to the output in cell blocks (automatic from"
                        f" {OUT_OF_CORE_ENTRIES:.0e} cells x peaks)")
    p.set_defaults(func=cmd_enhance)
    p = sub.add_parser("demo", help="run the pipeline on the bundled Granja bone-marrow data")
    p.add_argument("--seed", type=seed_type(), default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    try:
        from sccase_jax import evaluate_cli
    except ImportError:
        pass
    else:
        evaluate_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Parse ``argv`` and run the command; returns the exit status (2 for a user error)."""
    from sccase_jax.api import InputError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # bad usage (one line printed) or --help: return the status
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, InputError) as exc:
        print(f"sccase-jax: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("sccase-jax: error: out of memory; try fewer cells or x_format='sparse'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sccase-jax: interrupted", file=sys.stderr)
        return 130


def exit_on_signal() -> None:
    """Make Ctrl-C (SIGINT) and SIGTERM end the process at once, without unwinding.

    A ``KeyboardInterrupt`` raised while XLA compiles or runs, or while the interpreter
    shuts down with XLA's threads still busy, crashed the process (segmentation fault in
    2 of 4 tries), and libraries that catch every exception on import swallowed it.  So
    the signal never becomes an exception: Python's C-level handler writes its number to
    a pipe (``signal.set_wakeup_fd``) even while the main thread is inside compiled code,
    and a thread waiting on that pipe removes the temporary output files being written
    (:func:`sccase_jax.io.discard_temporaries`), prints one line and leaves with
    ``os._exit`` (status 130 for SIGINT, 143 for SIGTERM).  Only the command line
    installs this (:func:`run`); :func:`main` called from Python keeps the usual
    ``KeyboardInterrupt``.
    """
    import signal
    import threading

    lock = threading.Lock()

    def leave(signum: int) -> None:
        if not lock.acquire(blocking=False):
            return
        io = sys.modules.get("sccase_jax.io")  # no output is being written before its import
        if io is not None:
            io.discard_temporaries()
        os.write(2, b"\nsccase-jax: interrupted\n")
        os._exit(128 + int(signum))

    r, w = os.pipe()
    os.set_blocking(w, False)

    def watch() -> None:
        byte = os.read(r, 1)
        leave(byte[0] if byte else signal.SIGINT)

    threading.Thread(target=watch, name="sccase-jax-signals", daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: leave(signum))
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)


def run() -> None:
    """The ``sccase-jax`` console script: :func:`main` with :func:`exit_on_signal`."""
    exit_on_signal()
    sys.exit(main())


if __name__ == "__main__":
    run()
