"""Figures users expect: UMAP / t-SNE of raw vs enhanced data by cell type, and the loss curve.

Each function writes one PNG (matplotlib's Agg backend, no display needed) and returns its
path.  Embeddings are computed from PCA scores (cells x components), e.g. those returned by
:func:`sccase_jax.evaluation.clustering.evaluate_clustering` under ``"embedding"``.
"""

from __future__ import annotations

import numpy as np

from sccase_jax.evaluation.metrics import openmp_single_thread, require

__all__ = ["embed_2d", "plot_embeddings", "plot_loss", "plot_peak_heatmap"]


def _pyplot():
    mpl = require("matplotlib")
    mpl.use("Agg", force=True)
    return require("matplotlib.pyplot")


def embed_2d(pcs: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-d UMAP or t-SNE coordinates of PCA scores (cells x components)."""
    pcs = np.asarray(pcs, np.float32)
    if method == "umap":
        umap = require("umap")
        return umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed, n_jobs=1).fit_transform(pcs)
    if method == "tsne":
        manifold = require("sklearn.manifold")
        perplexity = float(min(30.0, max(2.0, (pcs.shape[0] - 1) / 3.0)))
        with openmp_single_thread():
            return manifold.TSNE(2, perplexity=perplexity, random_state=seed,
                                 init="pca").fit_transform(pcs)
    raise ValueError(f"method must be 'umap' or 'tsne', got {method!r}")


def plot_embeddings(panels: dict, labels, path: str, *, method: str = "umap", seed: int = 0,
                    title: str | None = None, coords: dict | None = None) -> str:
    """Side-by-side 2-d embeddings coloured by cell type, one panel per entry of ``panels``.

    Parameters
    ----------
    panels
        ``{"raw": pcs_raw, "scCASE": pcs_enhanced, ...}``: PCA scores (cells x components).
    labels
        Cell-type label per cell (same order in every panel).
    path
        Output PNG.
    method
        ``"umap"`` or ``"tsne"``.
    coords
        Precomputed 2-d coordinates per panel (skips the embedding).
    """
    plt = _pyplot()
    labels = np.asarray(labels).astype(str)
    cats = sorted(np.unique(labels))
    cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
    colors = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.8, 4.4), squeeze=False)
    for ax, (name, pcs) in zip(axes[0], panels.items()):
        xy = coords[name] if coords and name in coords else embed_2d(pcs, method, seed)
        for c in cats:
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=colors[c], label=c, linewidths=0,
                       rasterized=True)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method.upper()} 1")
        ax.set_ylabel(f"{method.upper()} 2")
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, markerscale=3,
                       frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(loss, path: str, *, initial_loss: float | None = None, title: str | None = None) -> str:
    """The objective F per iteration.

    With ``initial_loss``, two panels: F from the start (iteration 0, log scale) and F from
    the first iteration on, on its own scale.  The start is often orders of magnitude
    above the iterates (8e7 against 600 on the Granja data: the Jaccard start is far from
    ``H^T H``), which leaves a single curve flat after the first step.
    """
    plt = _pyplot()
    loss = np.asarray(loss, np.float64)
    panels = [(np.arange(1, len(loss) + 1), loss, "from iteration 1")]
    if initial_loss is not None:
        y0 = np.concatenate([[initial_loss], loss])
        panels.insert(0, (np.arange(len(y0)), y0, "from the start (iteration 0)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (x, y, label) in zip(axes[0], panels):
        ax.plot(x, y, marker="o" if len(y) < 30 else None, ms=3)
        finite = y[np.isfinite(y)]
        if label.startswith("from the start") and finite.size and np.all(finite > 0):
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("objective F")
        ax.set_title(label if len(panels) > 1 else (title or "scCASE objective"))
        ax.grid(alpha=0.3)
    if len(panels) > 1:
        fig.suptitle(title or "scCASE objective")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_peak_heatmap(values: np.ndarray, groups, peaks, path: str, *,
                      title: str | None = None) -> str:
    """Heatmap of ``values`` (groups x peaks, e.g. each group's mean enhanced accessibility
    of every group's top peaks, z-scored per peak)."""
    plt = _pyplot()
    values = np.asarray(values, float)
    w = min(24.0, 2.0 + 0.12 * values.shape[1])
    h = min(16.0, 1.5 + 0.3 * values.shape[0])
    fig, ax = plt.subplots(figsize=(w, h))
    im = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(groups)), labels=[str(g) for g in groups], fontsize=7)
    ax.set_xticks([])
    ax.set_xlabel(f"top peaks of each group ({len(peaks)}), in group order")
    fig.colorbar(im, ax=ax, label="z-score of the group mean")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
