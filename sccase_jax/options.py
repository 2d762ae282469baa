"""Every user-facing setting of sccase_jax, its default, its check and its command-line flag.

:class:`Options` is the one record of them.  ``enhance`` takes all of them, ``fit`` and
``sweep`` the ones of the fit (:data:`FIT`), and the command line builds its flags from
the same fields (``sccase_jax.cli.args``): adding an option is one :func:`option` here plus
the code that uses it.  The record checks every value when it is made (``__post_init__``),
once; code below it trusts it.

Some defaults depend on others: ``None`` stands for "decided by the preset, the solver
config or the reference" (``lam``, ``tol``, ``x_tol``, ``max_iter``, ``min_cells_frac``, ``output``,
``scale_output``, ``jaccard_normalize``, ``alpha``) and :meth:`Options.resolved` fills
them in.  A value passed explicitly always wins over a preset's.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from sccase_jax import validate as v

__all__ = ["ENHANCE", "FIT", "Options", "option", "options_from", "parse_term", "signature"]

FIT = "fit"  # an option of the fit itself: fit, sweep, enhance and the command line
ENHANCE = "enhance"  # an option of the AnnData front end: enhance and the command line

DEFAULT_MAX_ITER = 30  # docs/results.md: quality flat from 10 to 100 iterations
DEFAULT_TOL = 1e-6  # the paper's
# The rule on the iterate: stop once an iteration moves H and Z by less than this
# fraction of their size (docs/model.md, "Stopping": the answer settles in the first
# iteration; F then drifts towards 0 for as long as the fit runs).
DEFAULT_X_TOL = 1e-4
DEFAULT_LAM = 1e6  # the paper's
DEFAULT_LAM_REFERENCE = 1e5  # MODEL.md (scCASER)
# The blended output's default: each cell averages its DEFAULT_NEIGHBORS most similar cells
# under Z (all of them in data of at most that many cells); docs/results.md, "Defaults".
DEFAULT_NEIGHBORS = 300
# The projected optax solver's iteration budget (fit_variant): its steps are small.
VARIANT_MAX_ITER = 1000

PRESETS = ("paper", "release")
TFIDF = ("l2", "paper")
OUTPUTS = ("blend", "xz")
PEAK_MATCH = ("auto", "name", "overlap")
JACCARD_NORMALIZE = ("column", "row")
X_FORMATS = ("auto", "dense", "sparse")
GRAM_MODES = ("auto", "dense", "sparse")
LAYER_DTYPES = ("float32", "float16")
STORE_Z = ("auto", "full", "none")
Z_SUPPORTS = ("auto", "dense", "knn")
KNN_FROM = ("embedding", "cosine", "jaccard")
OFF_SUPPORT = ("drop", "exact")
BATCH_METHODS = ("harmony", "term")
# z_support="auto" restricts Z to each cell's candidate neighbours above this many cells
# (docs/atlas.md, "Which layout"): the same clustering as the dense fit at 2,000, 5,000 and
# 10,335 cells (experiments/layout_choice.py), with work and memory linear in the cells
# where the dense fit's grow as n^3 and n^2 (about 5.5 n^2 floats: 550 MB at 5,000 cells,
# 2.3 GB at 10,000; a 10,335-cell fit took 230 s dense, under 100 s on the support).
KNN_AUTO_CELLS = 5_000
DEFAULT_N_NEIGHBORS = 30
# The dense enhanced layer is stored (in the returned AnnData and the file) only up to this
# many bytes unless asked for: above it the output keeps the weights that reproduce it
# (obsp) and the values are computed on demand (docs/usage.md, "The enhanced layer").
DEFAULT_LAYER_BUDGET = 500_000_000


def option(default, help: str, check: Callable | None = None, *, scope: str = ENHANCE,
           flag: str | None = "", parse: Callable | None = None, choices=None,
           default_text: str | None = None, metavar: str | None = None):
    """A field of :class:`Options`.

    ``check(name, value)`` returns the canonical value or raises
    :class:`~sccase_jax.validate.InputError` (``None`` passes unchecked where it is the
    default).  ``flag`` is the command-line flag (``""``: from the name, ``--min-cells-frac``
    for ``min_cells_frac``; ``None``: none), ``parse`` turns its text into a value before
    the check (default: the type of the default), ``choices`` lists the allowed words,
    ``default_text`` says what the default means where it is ``None``.
    """
    meta = dict(help=help, check=check, scope=scope, flag=flag, parse=parse, choices=choices,
                default_text=default_text, metavar=metavar)
    return dataclasses.field(default=default, metadata=meta)


# -- checks that need more than one line --------------------------------------------------

def _nonneg(name, value):
    return v.check_real(name, value)


def _fraction(name, value):
    return v.check_real(name, value, 0.0, 1.0)


def _positive_int(name, value):
    return v.check_int(name, value, 1, integral_float=False)


def _count(name, value):
    return v.check_int(name, value, 0)


def _choice(choices):
    return lambda name, value: v.check_choice(name, value, choices)


def _neighbors(name, value):
    if value is None or (isinstance(value, str) and value in ("auto", "all")):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise v.InputError(f"{name} must be a positive integer, 'auto' or 'all' (or None), got {value!r}")


def _store_z(name, value):
    if isinstance(value, str) and value in STORE_Z:
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise v.InputError(f"{name} must be 'auto', 'full', 'none' or a positive integer, got {value!r}")


def _budget(name, value):
    """A number of bytes (``"500MB"``, ``"2GB"`` and ``"1e9"`` are read too), or None for no limit."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "inf", "all")):
        return None
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("B")
        units = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
        scale = units.get(text[-1:], 1.0)
        try:
            value = float(text[:-1] if text[-1:] in units else text) * scale
        except ValueError:
            raise v.InputError(f"{name} must be a number of bytes (e.g. 500MB, 2GB) or none, got "
                               f"{value!r}") from None
    return int(v.check_real(name, value))


def _optional_bool(name, value):
    if value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise v.InputError(f"{name} must be True, False or None, got {value!r}")
    return bool(value)


def _key(name, value):
    if not isinstance(value, str) or not value:
        raise v.InputError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _optional_key(name, value):
    if value is None:
        return None
    return _key(name, value)


def _layer(name, value):
    if value is not None and not isinstance(value, str):
        raise v.InputError(f"{name} must be a layer name (a string) or None, got {value!r}")
    return value


def _config(name, value):
    from sccase_jax.params import SolverConfig

    if value is not None and not isinstance(value, SolverConfig):
        raise v.InputError(
            f"{name} must be a SolverConfig (sccase_jax.params.SolverConfig(...) or "
            f"release_config(...)), got {type(value).__name__}: {value!r}")
    return value


def _dtype(name, value):
    return None if value is None else v.check_dtype(name, value)


def parse_term(text: str) -> tuple:
    """``"NAME:WEIGHT"`` as ``(NAME, WEIGHT)`` (the weight a float, or the text if not one)."""
    name, sep, weight = str(text).rpartition(":")
    if not sep or not name.strip():
        raise v.InputError(f"a term is NAME:WEIGHT (e.g. l1_z:0.1), got {text!r}")
    try:
        return name.strip(), float(weight)
    except ValueError:
        return name.strip(), weight


def _terms(name, value):
    from sccase_jax.terms.base import check_terms  # JAX: only when terms are given

    return None if value is None else check_terms(name, value)


def _int_or_word(words):
    """A command-line parser: one of ``words`` or an integer (else the text, for the check)."""

    def parse(text: str):
        if text in words:
            return text
        try:
            return int(text)
        except ValueError:
            return text

    return parse


@dataclasses.dataclass(frozen=True)
class Options:
    """Every user-facing setting with its default (see the module docstring)."""

    # The model (paper Eq. 2) --------------------------------------------------------------
    n_components: int | None = option(
        None, "number of components k (default: the estimated number of cell types + 1; "
        "with a reference round(1.3 c) + c // 2500, c at least the number of profiles)",
        _positive_int, scope=FIT, flag="--k")
    lam: float | None = option(
        None, "weight of ||Z - H^T H||^2", _nonneg, scope=FIT,
        default_text="1e6; 1e5 with a reference")
    gamma1: float = option(1.0, "ridge weight on W", _nonneg, scope=FIT)
    gamma2: float = option(1.0, "ridge weight on H", _nonneg, scope=FIT)
    keep_prob: float = option(0.95, "keep probability s of the random mask R, in (0, 1]",
                              v.check_keep_prob, scope=FIT)
    # Stopping ----------------------------------------------------------------------------
    tol: float | None = option(
        None, "relative change of F to stop at", _nonneg, scope=FIT,
        default_text="1e-6; 0, i.e. run all iterations, with --preset release")
    x_tol: float | None = option(
        None, "also stop once an iteration moves H and Z (what the output is built from) by "
        "less than this fraction of their size (0: the rule on F alone)", _nonneg, scope=FIT,
        default_text="1e-4; 0 when tol is given, with --preset release or with a config")
    max_iter: int | None = option(
        None, "maximum iterations", _count, scope=FIT,
        default_text="30; 3 with --preset release")
    seed: int = option(0, "random seed, 0 to 2**32 - 1 (mask R, NMF start, estimate of k)",
                       v.check_seed, scope=FIT)
    # The start and the arithmetic -----------------------------------------------------------
    jaccard_normalize: str | None = option(
        None, "normalisation of the Jaccard start Z0", _choice(JACCARD_NORMALIZE), scope=FIT,
        flag=None, default_text="column (the paper); row with the release preset")
    nmf_iter: int = option(200, "most HALS sweeps of the NMF start", _count, scope=FIT, flag=None)
    nmf_tol: float = option(0.0, "stop the NMF start once a HALS sweep lowers ||X - W H||^2 by "
                            "less than this fraction of itself (0: all nmf_iter sweeps)", _nonneg,
                            scope=FIT, flag=None)
    nmf_sketch: int = option(
        0, "the first N of the NMF start's sweeps fit X's rank-(k + 10) randomized sketch "
        "instead of X: cheaper products on large peak sets, a different start (0: none)",
        _count, scope=FIT, flag=None)
    x_format: str = option("auto", "how X is kept on device: dense, sparse (BCOO) or auto",
                           _choice(X_FORMATS), scope=FIT, flag=None)
    gram: str = option("auto", "products with G = X^T X: dense (G formed), sparse or auto",
                       _choice(GRAM_MODES), scope=FIT, flag=None)
    z_support: str = option(
        "auto", "Z dense (n x n) or restricted to each cell's n_neighbors candidate "
        "neighbours ('knn', also with a reference, the batch term or the depth term); auto: "
        "knn above 5,000 cells", _choice(Z_SUPPORTS),
        scope=FIT, choices=Z_SUPPORTS)
    n_neighbors: int = option(DEFAULT_N_NEIGHBORS, "candidate neighbours per cell (itself "
                              "included) of the knn support", _positive_int, scope=FIT)
    knn_from: str = option("embedding", "the knn support: largest h_i . h_j of the NMF "
                           "embedding (the weights the dense output keeps), cosine kNN on it, "
                           "or Jaccard kNN of the binarised profiles", _choice(KNN_FROM),
                           scope=FIT, choices=KNN_FROM)
    off_support: str = option(
        "drop", "knn support: 'exact' keeps the off-support part of lam ||Z - H^T H||^2 "
        "(paper Eq. 2 with Z on the support; at lam = 1e6 it drives H to 0), 'drop' fits "
        "Z to H^T H on the support only", _choice(OFF_SUPPORT), scope=FIT, choices=OFF_SUPPORT)
    terms: Any = option(
        None, "extra registered loss terms (sccase_jax.terms.register_term) with their "
        "weights, {name: weight} (repeat --term NAME:WEIGHT); fitted with the built-in "
        "terms by the solver over the terms, on either Z layout", _terms, scope=FIT,
        flag="--term", metavar="NAME:WEIGHT", default_text="none")
    dtype: Any = option(None, "computation dtype, float32 or float64 (needs jax_enable_x64)",
                        _dtype, scope=FIT, flag=None, default_text="float32")
    preset: str = option("paper", "'paper' (default) or 'release': the sccase 0.2.5 solver",
                         _choice(PRESETS), scope=FIT, choices=PRESETS)
    config: Any = option(None, "a full SolverConfig (step rules, guard, H rescaling)", _config,
                         scope=FIT, flag=None)
    progress: bool = option(False, "print each stage and iteration to stderr", v.check_bool,
                            scope=FIT, flag=None)
    # Preprocessing --------------------------------------------------------------------------
    layer: str | None = option(None, "read counts from this layer instead of X", _layer,
                               parse=str, metavar="NAME")
    min_cells_frac: float | None = option(
        None, "drop peaks open in fewer than this fraction of cells", _fraction,
        default_text="0: only empty peaks; 0.01 with --preset release")
    tfidf: str = option("l2", "TF-IDF variant ('paper' is Eq. 1)",
                        lambda name, value: v.check_choice("tfidf variant", value, TFIDF),
                        choices=TFIDF)
    binarize: bool = option(False, "binarise counts before TF-IDF", v.check_bool)
    drop_empty_cells: bool = option(False, "remove cells with no counts after peak filtering",
                                    v.check_bool)
    # scCASER ---------------------------------------------------------------------------------
    k_ref: int | None = option(None, "reference columns k1", _positive_int, scope=FIT,
                               default_text="min(profiles, k - 1)")
    alpha: float | None = option(None, "pull of W1 towards P", _nonneg, scope=FIT,
                                 default_text="1")
    # Batch correction (docs/batch.md) --------------------------------------------------------
    batch_key: str | None = option(
        None, "obs column of the batches, corrected as batch_method says (docs/batch.md)",
        _optional_key, parse=str,
        metavar="KEY")
    batch_method: str = option(
        "harmony", "how batch_key corrects: 'harmony' corrects the fit's cell embedding with "
        "Harmony (harmonypy) and builds the output's similarity from it; 'term' adds the "
        "batch term batch_weight x lam x ||A Z||^2 to the objective (docs/batch.md)",
        _choice(BATCH_METHODS), choices=BATCH_METHODS)
    batch_weight: float = option(1.0, "weight beta of the batch term relative to lam (at a "
                                 "fixed H it shrinks the between-batch part of Z by 1 / (1 + "
                                 "beta))", _nonneg)
    correct_depth: bool = option(
        False, "the release's depth term, exact: lam ||Z - P H^T H||^2, P = diag(depth / "
        "median depth) (docs/depth.md)", v.check_bool)
    peak_match: str = option("auto", "match reference peaks by name or genomic overlap",
                             _choice(PEAK_MATCH), choices=PEAK_MATCH)
    min_peak_match: float = option(0.1, "refuse a reference matching fewer target peaks than "
                                   "this fraction", _fraction)
    warn_peak_match: float = option(0.5, "warn when a reference matches fewer target peaks "
                                    "than this fraction", _fraction, flag=None)
    # The output ------------------------------------------------------------------------------
    output: str | None = option(
        None, "enhanced matrix: 'blend' = (1 - w) X + w X Zc, 'xz' = the paper's X Z",
        _choice(OUTPUTS), choices=OUTPUTS, flag="--output-type",
        default_text="blend; xz with --preset release")
    blend: float = option(0.8, "weight w of the Z-weighted cell average in the blend",
                          _fraction)
    scale_output: bool | None = option(
        None, "min-max scale the output per peak then per cell", _optional_bool,
        default_text="True for xz, False for blend")
    neighbors: int | str | None = option(
        "auto", "keep only each cell's N largest weights in Z for the output; 'all' keeps "
        "every cell", _neighbors, parse=_int_or_word(("auto", "all")), metavar="N|all",
        default_text="for blend the cells that pool ~30,000 nonzero entries or a tenth of "
        "the cells, within 50 to 1,000 and at most 3 cells in 10; all for xz")
    key_added: str = option("sccase", "prefix of the written keys", _key, flag=None)
    store_z: int | str = option(
        "auto", "what obsp keeps of Z: 'auto' = the neighbours the output used (sparse; the "
        "whole dense Z when it used every cell), N = each cell's N largest weights, 'full' = "
        "dense n x n, 'none'", _store_z, parse=_int_or_word(STORE_Z),
        metavar="auto|full|none|N")
    layer_dtype: str = option("float32", "dtype of the enhanced layer (float16: half the size)",
                              _choice(LAYER_DTYPES), choices=LAYER_DTYPES)
    store_layer: bool = option(True, "keep the enhanced layer (False: recomputable from the "
                               "stored Z with sccase_jax.tl.enhanced_layer)", v.check_bool,
                               flag=None)
    layer_budget: int | None = option(
        DEFAULT_LAYER_BUDGET, "store the dense enhanced layer only up to this many bytes "
        "(e.g. 2GB; none: always); above it the output keeps the weights that reproduce it "
        "and sccase_jax.tl.enhanced computes it on demand", _budget, parse=str,
        metavar="BYTES|none", default_text="500MB")
    # Files -------------------------------------------------------------------------------------
    out_file: Any = option(None, "write the result to this .h5ad, the enhanced layer in cell "
                           "blocks", flag=None)
    overwrite: bool = option(False, "replace an existing out_file", v.check_bool, flag=None)
    block: int = option(1024, "cells per block of the enhanced layer", _positive_int,
                        flag=None)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check = f.metadata["check"]
            if check is not None and not (value is None and f.default is None):
                object.__setattr__(self, f.name, check(f.name, value))

    def replace(self, **changes) -> Options:
        """A copy with ``changes`` (checked)."""
        return dataclasses.replace(self, **changes)

    def resolved(self, *, reference: bool = False) -> Options:
        """The options with every ``None`` default decided (preset, config, reference).

        ``tol``, ``x_tol`` and ``max_iter``: the config's when one is given, else the
        preset's (3 iterations, ``tol = x_tol = 0`` for the release), else 30, 1e-6 and
        :data:`DEFAULT_X_TOL` (0 when ``tol`` is given: the paper's rule alone, as asked).
        """
        from sccase_jax.params import release_config

        release = self.preset == "release"
        config = self.config if self.config is not None else (release_config() if release else None)
        output = self.output or ("xz" if release else "blend")
        return dataclasses.replace(
            self,
            config=config,
            lam=self.lam if self.lam is not None else (DEFAULT_LAM_REFERENCE if reference else DEFAULT_LAM),
            tol=self.tol if self.tol is not None else (config.tol if config else DEFAULT_TOL),
            x_tol=(self.x_tol if self.x_tol is not None else
                   (config.x_tol if config else (0.0 if self.tol is not None else DEFAULT_X_TOL))),
            max_iter=(self.max_iter if self.max_iter is not None
                      else (config.max_iter if config else DEFAULT_MAX_ITER)),
            jaccard_normalize=self.jaccard_normalize or ("row" if release else "column"),
            min_cells_frac=(self.min_cells_frac if self.min_cells_frac is not None
                            else (0.01 if release else 0.0)),
            output=output,
            scale_output=self.scale_output if self.scale_output is not None else output == "xz",
            alpha=self.alpha if self.alpha is not None else (1.0 if reference else 0.0),
        )

    @classmethod
    def names(cls, scope: str | None = None) -> list[str]:
        """The options' names: all, or those of the fit (:data:`FIT`; every option is one of
        ``enhance``)."""
        return [f.name for f in dataclasses.fields(cls)
                if scope in (None, ENHANCE) or f.metadata["scope"] == scope]


def options_from(kwargs: dict, *, allowed=None, caller: str = "enhance",
                 none_is_default: bool = True) -> Options:
    """:class:`Options` from keyword arguments, refusing unknown ones as Python would.

    An unknown name (or one outside ``allowed``) is a ``TypeError`` naming ``caller`` and
    the closest valid name, raised before any work.  Without ``none_is_default`` (the
    array-level ``fit``, whose options are numbers) an explicit ``None`` is checked like
    any other value, so ``fit(max_iter=None)`` is refused instead of meaning "the default".
    """
    names = set(Options.names() if allowed is None else allowed)
    for name in kwargs:
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{hint}")
    if not none_is_default:
        fields = {f.name: f for f in dataclasses.fields(Options)}
        for name, value in kwargs.items():
            check = fields[name].metadata["check"]
            if value is None and check is not None and name not in _NONE_ALLOWED:
                check(name, value)
    return Options(**kwargs)


# Options for which None is a real value, not only "the default" (dtype: JAX's default).
_NONE_ALLOWED = frozenset({"n_components", "terms", "dtype", "config", "k_ref", "jaccard_normalize",
                           "layer", "scale_output", "neighbors", "out_file", "output",
                           "min_cells_frac"})


def signature(fn: Callable, scope: str | None, keep=()) -> inspect.Signature:
    """``fn``'s signature with its ``**options`` spelt out as the keyword-only options of
    ``scope`` and their defaults (what ``help`` and an IDE show); ``keep`` names the
    parameters of ``fn`` itself kept in front."""
    own = inspect.signature(fn).parameters
    params = [own[name] for name in keep]
    kw = inspect.Parameter.KEYWORD_ONLY
    params += [inspect.Parameter(f.name, kw, default=f.default)
               for f in dataclasses.fields(Options)
               if (scope is None or f.metadata["scope"] == scope or
                   (scope == ENHANCE and f.metadata["scope"] == FIT)) and f.name not in keep]
    return inspect.Signature(params)
