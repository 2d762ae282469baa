"""Evaluation as in the paper: clustering scores, accuracy against a truth, figures.

- :mod:`~sccase_jax.evaluation.metrics`: auROC / auPRC per row, ARI / AMI / FMI, label
  silhouette, imbalance index;
- :mod:`~sccase_jax.evaluation.clustering`: TF-IDF -> PCA -> neighbour graph ->
  Leiden/Louvain searched to the number of types (``evaluate_clustering``);
- :mod:`~sccase_jax.evaluation.plotting`: UMAP / t-SNE panels and the loss curve;
- :mod:`~sccase_jax.evaluation.recovery`: hide counts, enhance the rest, score the hidden
  ones (it runs ``enhance``: the one module here that sits above the fit).

They need the optional extras (``pip install "sccase_jax[eval]"``).  This package imports
none of its modules itself, so that the lower ones (clustering, used by the estimate of k)
do not pull in the upper one (recovery).
"""
