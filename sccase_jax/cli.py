"""``sccase-jax``: a thin command line over :func:`sccase_jax.enhance`.

Subcommands: ``enhance IN.h5ad OUT.h5ad``, ``demo``.  Bad input ends with a one-line
``sccase-jax: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

__all__ = ["main"]

# Above this many cells x peaks (4 GB as float32) the enhanced layer is written block by block.
OUT_OF_CORE_ENTRIES = 1_000_000_000


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _read_h5ad(path: str):
    import anndata as ad

    if not os.path.exists(path):
        raise CLIError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"input is a directory, not an .h5ad file: {path}")
    if not path.endswith(".h5ad"):
        raise CLIError(f"input must be an .h5ad file: {path}")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for a corrupt file
        raise CLIError(f"cannot read {path} as an .h5ad file ({type(exc).__name__}: {exc})") from None


def _check_output(out: str, inp: str | None = None) -> str:
    out = os.path.abspath(out)
    if not out.endswith(".h5ad"):
        raise CLIError(f"output must end in .h5ad: {out}")
    if inp is not None and os.path.abspath(inp) == out:
        raise CLIError("output path is the input file; the input is never overwritten")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise CLIError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"output directory is not writable: {parent}")
    if os.path.isdir(out):
        raise CLIError(f"output path is a directory: {out}")
    return out


def write_h5ad_atomic(adata, out: str) -> None:
    """Write to a temporary file beside ``out`` and rename: no partial file is left."""
    fd, tmp = tempfile.mkstemp(suffix=".h5ad.part", dir=os.path.dirname(out))
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise CLIError(f"cannot write {out}: {exc}") from None
        raise


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    from sccase_jax.api import DEFAULT_MAX_ITER

    p.add_argument("--k", type=int, default=None,
                   help="number of components (default: estimated number of types + 1; with "
                        "--reference round(1.3 c), c at least the number of profiles)")
    p.add_argument("--lam", type=float, default=None,
                   help="weight of ||Z - H^T H||^2 (default 1e6; 1e5 with --reference)")
    p.add_argument("--gamma1", type=float, default=1.0, help="ridge weight on W (default 1)")
    p.add_argument("--gamma2", type=float, default=1.0, help="ridge weight on H (default 1)")
    p.add_argument("--keep-prob", type=float, default=0.95, help="keep probability of the mask R")
    p.add_argument("--tol", type=float, default=1e-6, help="relative change of F to stop at")
    p.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER, help="maximum iterations")
    p.add_argument("--seed", type=int, default=0, help="random seed (mask R and NMF start)")
    p.add_argument("--layer", default=None, help="read counts from this layer instead of X")
    p.add_argument("--min-cells-frac", type=float, default=None,
                   help="drop peaks open in fewer than this fraction of cells "
                        "(default 0: only empty peaks; 0.01 with --preset release)")
    p.add_argument("--tfidf", choices=["paper", "l2"], default="l2",
                   help="TF-IDF variant (default l2; 'paper' is Eq. 1)")
    p.add_argument("--output-type", dest="output_type", choices=["blend", "xz"], default=None,
                   help="enhanced matrix: 'blend' = (1 - w) X + w X Zc (default), 'xz' = the "
                        "paper's X Z (default with --preset release)")
    p.add_argument("--blend", type=float, default=0.8,
                   help="weight w of the Z-weighted cell average in --output-type blend (default 0.8)")
    p.add_argument("--scale-output", dest="scale_output", action="store_true", default=None,
                   help="min-max scale the output per peak then per cell (default for xz)")
    p.add_argument("--no-scale-output", dest="scale_output", action="store_false",
                   help="return the output unscaled (default for blend)")
    p.add_argument("--neighbors", type=int, default=None, metavar="N",
                   help="keep only each cell's N largest weights in Z for the output "
                        "(default: all; docs/results.md, item 9)")
    p.add_argument("--binarize", action="store_true", help="binarise counts before TF-IDF")
    p.add_argument("--drop-empty-cells", action="store_true",
                   help="remove cells with no counts after peak filtering")
    p.add_argument("--preset", choices=["paper", "release"], default="paper",
                   help="'release' reproduces sccase 0.2.5")
    p.add_argument("--reference", default=None, metavar="REF.h5ad",
                   help="scCASER: reference profiles x peaks (.h5ad); --k stays the total k")
    p.add_argument("--k-ref", type=int, default=None,
                   help="reference columns k1 (default min(profiles, k - 1))")
    p.add_argument("--alpha", type=float, default=None, help="pull of W1 towards P (default 1)")
    p.add_argument("--peak-match", choices=["auto", "name", "overlap"], default="auto",
                   help="match reference peaks by name or genomic overlap (default auto)")
    p.add_argument("--min-peak-match", type=float, default=0.1,
                   help="refuse a reference matching fewer target peaks than this (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _fit_kwargs(args) -> dict:
    return dict(
        n_components=args.k,
        out_file=getattr(args, "out_file", None),
        lam=args.lam,
        gamma1=args.gamma1,
        gamma2=args.gamma2,
        keep_prob=args.keep_prob,
        tol=args.tol,
        max_iter=args.max_iter,
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
        k_ref=args.k_ref,
        alpha=args.alpha,
        peak_match=args.peak_match,
        min_peak_match=args.min_peak_match,
    )


def _log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def cmd_enhance(args) -> int:
    from sccase_jax.tl import enhance

    out = _check_output(args.output, args.input)
    adata = _read_h5ad(args.input)
    _log(args, f"read {args.input}: {adata.n_obs} cells x {adata.n_vars} peaks")
    args.out_file = None
    if args.out_of_core or adata.n_obs * adata.n_vars >= OUT_OF_CORE_ENTRIES:
        fd, args.out_file = tempfile.mkstemp(suffix=".h5ad.part", dir=os.path.dirname(out))
        os.close(fd)
        _log(args, "writing the enhanced layer block by block (out of core)")
    kwargs = _fit_kwargs(args)
    if args.reference is not None:
        kwargs["reference"] = _read_h5ad(args.reference)
        _log(args, f"read {args.reference}: {kwargs['reference'].n_obs} reference profiles")
    elif args.k_ref is not None or args.alpha is not None:
        raise CLIError("--k-ref and --alpha need --reference")
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
    _log(args, f"fit: {info['n_iter']} iterations, {info['status']}, {time.perf_counter() - t0:.1f} s;"
               f" {result.n_obs} cells x {result.n_vars} peaks kept")
    if args.out_file is None:
        write_h5ad_atomic(result, out)
    else:  # already written block by block beside ``out``
        os.replace(args.out_file, out)
    _log(args, f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    from sccase_jax.demo import run_demo

    return run_demo(quiet=args.quiet, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sccase-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("enhance", help="enhance an .h5ad file (cells x peaks counts)")
    p.add_argument("input", help="input .h5ad (counts in X or --layer)")
    p.add_argument("output", help="output .h5ad")
    _add_fit_args(p)
    p.add_argument("--out-of-core", action="store_true",
                   help="write the enhanced layer to the output in cell blocks (automatic from"
                        f" {OUT_OF_CORE_ENTRIES:.0e} cells x peaks)")
    p.set_defaults(func=cmd_enhance)
    p = sub.add_parser("demo", help="run the pipeline on the bundled Granja bone-marrow data")
    p.add_argument("--seed", type=int, default=0)
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
    from sccase_jax.api import InputError

    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
