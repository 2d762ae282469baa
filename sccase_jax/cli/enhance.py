"""``sccase-jax enhance IN OUT.h5ad [options]``: :func:`sccase_jax.enhance` on a file.

IN is any input :func:`sccase_jax.readers.read` reads (an .h5ad, a Cell Ranger .h5 or
matrix-market folder, a fragments file with ``--peaks``, a MuData .h5mu), told apart by
its content.
The output is checked before the input is read (:func:`sccase_jax.io.check_out_file`:
never the input or the reference under any alias, a directory where a file can really
be created), written to a temporary file beside it and renamed (no partial file is ever
left, also on Ctrl-C), with the permissions of a newly created file; the size it will
have is printed before it is written.
"""

from __future__ import annotations

import importlib
import sys
import time
import warnings

from sccase_jax import io
from sccase_jax.cli.args import add_options, given_options, int_at_least
from sccase_jax.validate import InputError

# sccase_jax.readers.COUNTINGS, spelt out: the parser must not import the readers' dependencies.
COUNTINGS = ("insertion", "paired-insertion", "fragment")

__all__ = ["ENHANCE_OPTIONS", "OUT_OF_CORE_ENTRIES", "add_parser", "run"]

# Above this many cells x peaks (4 GB as float32) the enhanced layer is written block by block.
OUT_OF_CORE_ENTRIES = 1_000_000_000

# The options of enhance that have a flag here, in the order of the help.
ENHANCE_OPTIONS = (
    "n_components", "lam", "gamma1", "gamma2", "keep_prob", "tol", "x_tol", "max_iter", "seed", "layer",
    "min_cells_frac", "tfidf", "output", "blend", "scale_output", "neighbors", "binarize",
    "drop_empty_cells", "preset", "k_ref", "alpha", "peak_match", "min_peak_match", "store_z",
    "layer_dtype", "batch_key", "batch_method", "batch_weight", "correct_depth", "terms",
) + ("z_support", "n_neighbors", "knn_from", "off_support") + ("layer_budget",)


def add_parser(subparsers):
    """Add the ``enhance`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("enhance", help="enhance scATAC counts (.h5ad, Cell Ranger .h5 or "
                              "matrix-market folder, fragments + peaks BED, .h5mu)")
    p.add_argument("input", help="input: .h5ad (counts in X or --layer), Cell Ranger "
                   "filtered_peak_bc_matrix.h5 / filtered_feature_bc_matrix.h5, a matrix-market "
                   "folder, fragments.tsv.gz (with --peaks) or .h5mu (its atac modality)")
    p.add_argument("output_file", metavar="output", help="output .h5ad")
    add_options(p, ENHANCE_OPTIONS)
    p.add_argument("--reference", default=None, metavar="REF.h5ad",
                   help="scCASER: reference profiles x peaks (.h5ad); --k stays the total k")
    p.add_argument("--peaks", default=None, metavar="PEAKS.bed",
                   help="fragments input: the peaks to count in (BED: chrom, start, end)")
    p.add_argument("--barcodes", default=None, metavar="BARCODES.tsv",
                   help="fragments input: the cell barcodes to keep, one per line (default: "
                        "barcodes with at least --min-fragments fragments)")
    p.add_argument("--min-fragments", type=int_at_least("min_fragments", 0), default=None,
                   metavar="N", help="fragments input without --barcodes: keep barcodes with at "
                   "least N unique fragments (default 200)")
    p.add_argument("--counting", choices=COUNTINGS, default="insertion",
                   help="fragments input: insertion (cut sites, as Cell Ranger counts; default), "
                        "paired-insertion or fragment (SnapATAC2's strategies)")
    p.add_argument("--modality", default="atac", help=".h5mu input: the modality (default atac)")
    p.add_argument("--no-layer", dest="store_layer", action="store_false",
                   help="leave the dense enhanced layer out of the output whatever its size "
                        "(sccase_jax.tl.enhanced computes it on demand from the stored weights)")
    p.add_argument("--out-of-core", action="store_true",
                   help="write the enhanced layer to the output in cell blocks (automatic from"
                        f" {OUT_OF_CORE_ENTRIES:.0e} cells x peaks)")
    p.add_argument("--term-module", action="append", default=[], metavar="MODULE",
                   help="import MODULE (importable, e.g. on PYTHONPATH) before the fit: the "
                        "module that registers the terms --term names; repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def _log(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def run(args) -> int:
    """Run ``enhance``; user errors raise :class:`~sccase_jax.validate.InputError`."""
    from sccase_jax import tl  # imports JAX: not before a command needs it
    from sccase_jax.readers import detect_format, read

    if args.reference is None and (args.k_ref is not None or args.alpha is not None):
        raise InputError("--k-ref and --alpha need --reference")
    out = io.check_out_file(args.output_file, protect=(("input", args.input),
                                                  ("reference", args.reference)),
                            overwrite=True, what="output")
    if detect_format(args.input) == "fragments" and args.peaks is not None:
        _log(args, f"counting {args.input} in the peaks of {args.peaks} with SnapATAC2 "
                   f"({args.counting}; a large file takes minutes)")
    adata = read(args.input, peaks=args.peaks, barcodes=args.barcodes, counting=args.counting,
                 min_fragments=args.min_fragments, modality=args.modality)
    source = adata.uns.get("sccase_input", {}).get("format", "h5ad")
    _log(args, f"read {args.input} ({source}): {adata.n_obs} cells x {adata.n_vars} peaks")
    for module in args.term_module:  # registers the terms --term names, before they are checked
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InputError(f"--term-module {module}: {exc}") from None
    kwargs = dict(given_options(args, ENHANCE_OPTIONS), progress=not args.quiet,
                  store_layer=args.store_layer)
    if args.reference is not None:
        kwargs["reference"] = io.read_h5ad(args.reference, "reference")
        _log(args, f"read {args.reference}: {kwargs['reference'].n_obs} reference profiles")
    entries = adata.n_obs * adata.n_vars
    stored = args.store_layer and (args.layer_budget is None or
                                   entries * (2 if args.layer_dtype == "float16" else 4) <= args.layer_budget)
    out_of_core = args.out_of_core or entries >= OUT_OF_CORE_ENTRIES
    with io.atomic_output(out) as tmp:
        if out_of_core and stored:
            # Everything that can be checked without the fit has been; enhance writes the
            # file block by block under the temporary name, renamed when all is done.
            kwargs.update(out_file=tmp, overwrite=True)
            _log(args, "writing the enhanced layer block by block (out of core)")
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = tl.enhance(adata, **kwargs)
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
    """What makes up the written file, largest first: 'layer sccase 72.0 MB float32 dense, ...'."""
    parts = []
    for name, group in (("layer", adata.layers), ("obsp", adata.obsp)):
        for key in group.keys():
            a = group[key]
            kind = "sparse" if hasattr(a, "indptr") else "dense"
            parts.append((io.array_bytes(a), f"{name} {key} {{}} {a.dtype} {kind}"))
    parts.append((io.array_bytes(adata.X), "counts {}"))
    parts.sort(key=lambda p: -p[0])
    return ", ".join(label.format(io.format_bytes(b)) for b, label in parts[:4])
