"""Every Python snippet in README.md and docs/ runs as written.

The snippets of one page run in order, in one fresh Python process (as a reader would
paste them into one session), in a directory holding the example files the pages name:
``my_scatac.h5ad`` (cells x peaks counts with ``obs["cell_type"]``), ``other_donor.h5ad``
(another labelled dataset on the same peaks) and ``reference.h5ad`` (profiles x peaks).
They are small subsets of the bundled Granja bone-marrow data, so the pages' settings run
in seconds.  A snippet that cannot run on one machine is preceded by the line
``<!-- not run: <reason> -->``; the test checks that such a reason is given.
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)
SKIP = re.compile(r"<!-- not run: (?P<why>[^>]+?) -->")


def snippets(page: pathlib.Path):
    """``[(line, code, skip_reason or None)]`` of the page's ```python blocks."""
    text = page.read_text()
    out = []
    for m in BLOCK.finditer("\n" + text):
        line = text[: max(m.start("code") - 1, 0)].count("\n") + 1
        skip = SKIP.search(m.group("before"))
        out.append((line, m.group("code"), skip.group("why") if skip else None))
    return out


PAGES_WITH_CODE = [p for p in PAGES if snippets(p)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from sccase_jax.datasets import granja_bm600
    from sccase_jax.reference import pseudobulk_reference

    a = granja_bm600()
    types = a.obs["cell_type"].cat.categories
    pick = lambda lo, hi: np.concatenate(  # noqa: E731
        [np.flatnonzero(a.obs["cell_type"] == t)[lo:hi] for t in types])
    d = tmp_path_factory.mktemp("docs")
    a[pick(0, 10)].copy().write_h5ad(d / "my_scatac.h5ad")
    other = a[pick(10, 30)].copy()
    other.write_h5ad(d / "other_donor.h5ad")
    pseudobulk_reference(other.X, other.obs["cell_type"], var=other.var).write_h5ad(
        d / "reference.h5ad")
    return d


def test_some_pages_have_code():
    assert {p.name for p in PAGES_WITH_CODE} >= {"README.md", "developers.md"}


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_run_as_written(page, workdir):
    parts = []
    for line, code, skip in snippets(page):
        if skip is not None:
            assert skip.strip(), f"{page.name}:{line}: a skipped snippet must say why"
            continue
        parts.append(f"# --- {page.name}:{line}\n__snippet__ = {line}\n{code}\n")
    script = workdir / f"snippets_{page.stem}.py"
    script.write_text("\n".join(parts))
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    r = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"{page.name}: a snippet failed\n{r.stderr[-3000:]}"
