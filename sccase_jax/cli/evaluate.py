"""``sccase-jax evaluate IN.h5ad --labels cell_type --out DIR``: score raw vs enhanced data.

IN.h5ad is normally the output of ``sccase-jax enhance`` (raw counts in ``X``, the enhanced
matrix in ``layers["sccase"]``, the loss in ``uns["sccase"]``).  Without that layer the data
is enhanced first with the default settings.  Cells without a label (NaN / None in the
labels column) are left out of the scores, with a note saying how many; fewer than two
labelled types is refused.  DIR receives

* ``metrics.json`` and ``metrics.md``: ARI / AMI / FMI (mean over Leiden seeds, resolution
  searched to the number of labels), label silhouette (1 - Pearson), imbalance index,
  for the raw counts under each TF-IDF (``--tfidf both``, the default: Eq. 1 of the paper
  and the L2 variant that ``enhance`` uses) and for the enhanced data;
* ``umap.png`` (and ``tsne.png`` with ``--tsne``): raw vs enhanced coloured by label;
* ``loss.png``: the objective per iteration, when the fit recorded it (two panels: from the
  start, and from the first iteration on its own scale).

A label column must hold cell types: a continuous column (FRiP) or one with more classes
than ``--max-classes`` (100) or than half the cells (total reads) is refused up front.
IN may be any input :func:`sccase_jax.readers.read` reads.  Without the enhanced layer,
an ``enhance`` output (written above its ``layer_budget`` or with ``--no-layer``) is
evaluated from its stored counts and weights without forming the dense matrix
(:func:`sccase_jax.tl.enhanced_matrix`; the PCA works through products with vectors);
any other input is enhanced with the default settings first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from sccase_jax.cli.args import int_at_least, seed_type
from sccase_jax.validate import InputError

__all__ = ["add_parser", "markdown_table", "run"]

_METRICS = ("ari", "ami", "fmi", "silhouette")

# Label columns with more classes than this are refused (a continuous or per-cell column
# such as total reads is not a cell typing).
MAX_CLASSES = 100
TFIDF_NAMES = {"paper": "raw (TF-IDF, Eq. 1)", "l2": "raw (L2 TF-IDF)"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("evaluate", help="clustering scores and figures, raw vs enhanced")
    p.add_argument("input", help="input .h5ad (raw counts in X; enhanced in --layer), or any "
                   "input sccase-jax enhance reads")
    p.add_argument("--labels", required=True,
                   help="obs column with the cell types (cells without a label are left out)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--layer", default=None,
                   help="layer with the enhanced matrix (default sccase; without it the input "
                        "is enhanced first, while a --layer given and missing is an error)")
    p.add_argument("--counts-layer", default=None, help="layer with raw counts (default X)")
    p.add_argument("--seeds", type=seed_type("a Leiden seed"), nargs="+", default=[0, 1, 2],
                   help="Leiden seeds (default 0 1 2)")
    p.add_argument("--method", choices=["leiden", "louvain"], default="leiden")
    p.add_argument("--graph", choices=["umap", "knn"], default="umap",
                   help="neighbour graph: scanpy's UMAP connectivities or a plain kNN graph")
    p.add_argument("--n-pcs", type=int_at_least("n_pcs"), default=50,
                   help="principal components of the embedding (default 50; at most cells - 1)")
    p.add_argument("--tfidf", choices=["both", "paper", "l2"], default="both",
                   help="TF-IDF of the raw baseline: 'paper' (Eq. 1), 'l2' (what enhance uses "
                        "by default) or 'both' (default: two raw rows)")
    p.add_argument("--max-classes", type=int_at_least("max_classes", 2), default=MAX_CLASSES,
                   help=f"refuse label columns with more classes than this (default {MAX_CLASSES})")
    p.add_argument("--tsne", action="store_true", help="also write tsne.png")
    p.add_argument("--no-umap", action="store_true", help="skip umap.png")
    p.add_argument("--seed", type=seed_type(), default=0,
                   help="seed of the enhancement (if run) and plots (default 0)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def markdown_table(rows: dict) -> str:
    """Markdown table of ``{name: {metric: value}}``."""
    cols = ["ari", "ami", "fmi", "silhouette", "reached"]
    lines = ["| data | " + " | ".join(c.upper() if c != "reached" else "k reached" for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _error(msg):
    return InputError(msg)


def run(args) -> int:
    """Run the ``evaluate`` subcommand; user errors raise ``InputError`` (exit status 2)."""
    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    from sccase_jax.readers import read  # pandas and the readers: not at start-up

    out_dir = os.path.abspath(args.out)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise _error(f"--out exists and is not a directory: {out_dir}")
    adata = read(args.input)
    if args.labels not in adata.obs:
        have = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise _error(f"labels column {args.labels!r} not in obs (available: {have})")
    labels, labelled = _labels(adata, args.labels, args.max_classes)  # refused up front
    if args.counts_layer is not None and args.counts_layer not in adata.layers:
        raise _error(f"counts layer {args.counts_layer!r} not in layers")
    if args.layer is not None and args.layer not in adata.layers:
        have = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise _error(f"layer {args.layer!r} not in layers (available: {have}); leave out "
                     "--layer to enhance the input first")
    t0 = time.perf_counter()
    if args.layer is None and "sccase" not in adata.layers and not _recomputable(adata):
        from sccase_jax.tl import enhance

        log("no layer 'sccase': enhancing with the default settings first")
        adata = enhance(adata, seed=args.seed, layer=args.counts_layer)
        labels, labelled = _labels(adata, args.labels, args.max_classes)
    layer = args.layer or "sccase"
    if layer in adata.layers:
        enhanced = np.asarray(adata.layers[layer])
    else:
        from sccase_jax.tl import enhanced_matrix

        log("no layer 'sccase': working from the stored counts and weights (the dense matrix "
            "is never formed)")
        enhanced = enhanced_matrix(adata)
    counts = adata.X if args.counts_layer is None else adata.layers[args.counts_layer]
    n_unlabelled = int(adata.n_obs - labelled.sum())
    if n_unlabelled:  # printed even with --quiet: it changes what is scored
        print(f"sccase-jax: note: {n_unlabelled} of {adata.n_obs} cells have no label in "
              f"{args.labels!r} and are left out of the evaluation", file=sys.stderr, flush=True)
        counts = counts[labelled]
        enhanced = (enhanced.select(cells=labelled) if hasattr(enhanced, "select")
                    else enhanced[labelled])
    created = not os.path.isdir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        return _evaluate(args, adata, counts, enhanced, labels, layer, n_unlabelled, out_dir, t0, log)
    except BaseException:
        if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)  # leave no empty directory behind
        raise


def _labels(adata, column, max_classes: int = MAX_CLASSES):
    """The labels of the labelled cells (as str) and the mask of labelled cells.

    Cells whose label is missing (NaN / None) are not a class of their own: they are left
    out.  Refused, up front: a numeric column with non-integral values (a continuous
    measurement such as FRiP, not cell types), more than ``max_classes`` classes or a class
    per cell on average of fewer than two cells (such as total reads), fewer than two
    labelled types.
    """
    import pandas as pd

    col = adata.obs[column]
    labelled = ~pd.isna(col).to_numpy()
    values = col[labelled]
    if (pd.api.types.is_float_dtype(values.dtype)
            and not np.all(np.asarray(values, np.float64) == np.round(np.asarray(values, np.float64)))):
        raise _error(f"labels column {column!r} holds continuous values ({values.dtype}, e.g. "
                     f"{values.iloc[0]!r}), not cell types; pass a categorical column")
    labels = values.astype(str).to_numpy()
    n_types = len(np.unique(labels))
    if n_types > max_classes or (n_types > 2 and 2 * n_types > len(labels)):
        raise _error(f"labels column {column!r} has {n_types} distinct values over {len(labels)} "
                     f"labelled cells: not cell types (at most {max_classes} classes, and fewer "
                     "than one per two cells; --max-classes raises the first limit)")
    if n_types < 2:
        unl = adata.n_obs - int(labelled.sum())
        extra = f" ({unl} of {adata.n_obs} cells have no label)" if unl else ""
        raise _error(f"labels column {column!r} has fewer than two classes{extra}")
    return labels, labelled


def _recomputable(adata) -> bool:
    """Whether ``adata`` is an enhance output that stores what reproduces its layer."""
    info = adata.uns.get("sccase")
    return (isinstance(info, dict) and "params" in info
            and ("sccase_weights" in adata.obsp or "sccase_Z" in adata.obsp))


def _evaluate(args, adata, counts, enhanced, labels, layer, n_unlabelled, out_dir, t0, log) -> int:
    # The evaluation extras: imported when the command runs.
    from sccase_jax.evaluation.clustering import evaluate_clustering
    from sccase_jax.evaluation.metrics import imbalance_index
    from sccase_jax.evaluation.plotting import plot_embeddings, plot_loss

    common = dict(n_pcs=args.n_pcs, method=args.method, seeds=tuple(args.seeds), graph=args.graph)
    rows = {}
    for variant in (("paper", "l2") if args.tfidf == "both" else (args.tfidf,)):
        log(f"clustering {TFIDF_NAMES[variant]} of the counts")
        rows[TFIDF_NAMES[variant]] = evaluate_clustering(counts, labels, transform="tfidf",
                                                          tfidf_variant=variant, **common)
    log("clustering enhanced matrix")
    rows[f"enhanced ({layer})"] = evaluate_clustering(enhanced, labels, transform=None, **common)
    report = {
        "input": os.path.abspath(args.input),
        "cells": int(len(labels)),
        "unlabelled_cells_left_out": n_unlabelled,
        "peaks": int(adata.n_vars),
        "n_types": int(len(np.unique(labels))),
        "imbalance_index": imbalance_index(labels),
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
        "results": {n: {k: v for k, v in r.items() if k != "embedding"} for n, r in rows.items()},
    }
    info = adata.uns.get(layer, {})
    if "params" in info:
        report["enhance_params"] = _jsonable(info["params"])
    files = []
    if not args.no_umap:
        files.append(plot_embeddings({n: r["embedding"] for n, r in rows.items()}, labels,
                                     os.path.join(out_dir, "umap.png"), method="umap", seed=args.seed))
    if args.tsne:
        files.append(plot_embeddings({n: r["embedding"] for n, r in rows.items()}, labels,
                                     os.path.join(out_dir, "tsne.png"), method="tsne", seed=args.seed))
    if "loss" in info and len(np.atleast_1d(info["loss"])):
        files.append(plot_loss(np.atleast_1d(info["loss"]), os.path.join(out_dir, "loss.png"),
                               initial_loss=info.get("initial_loss")))
    report["figures"] = [os.path.basename(f) for f in files]
    report["time_s"] = time.perf_counter() - t0
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(_jsonable(report), fh, indent=2)
    with open(os.path.join(out_dir, "metrics.md"), "w") as fh:
        fh.write(f"# Evaluation of {os.path.basename(args.input)}\n\n")
        left_out = f" ({n_unlabelled} cells without a label left out)" if n_unlabelled else ""
        fh.write(f"{len(labels)} cells{left_out} x {adata.n_vars} peaks, {report['n_types']} types "
                 f"(`{args.labels}`), imbalance index {report['imbalance_index']:.3f}. "
                 f"{args.method.capitalize()} resolution searched to {report['n_types']} clusters; "
                 f"mean over seeds {list(args.seeds)}.\n\n")
        fh.write(markdown_table(rows))
    for n, r in rows.items():
        log(f"{n}: ARI {r['ari']:.3f} AMI {r['ami']:.3f} FMI {r['fmi']:.3f} "
            f"silhouette {r['silhouette']:.3f}")
    log(f"wrote {out_dir}/metrics.json, metrics.md" + "".join(f", {f}" for f in report["figures"]))
    return 0


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v
