"""docs/developers.md, "A new term in one file": its first code block (the term, its
gradient and its exact steps) runs as written (in this process, float64 here;
tests/test_docs.py runs the whole page, the fits through enhance included, in float32)."""

import pathlib
import re

from sccase_jax.terms import TERMS

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "developers.md"


def section_code(title: str) -> str:
    text = PAGE.read_text()
    start = text.index(title)
    nxt = text.find("\n## ", start + len(title))
    section = text[start: nxt if nxt >= 0 else len(text)]
    blocks = re.findall(r"```python\n(.*?)\n```", section, re.S)
    assert blocks
    return blocks[0]


def test_a_new_term_in_one_file_runs(capsys):
    code = section_code("## 10. A new term in one file")
    try:
        exec(compile(code, str(PAGE), "exec"), {"__name__": "developers_snippet"})
    finally:
        TERMS.pop("l1_z", None)
    out = capsys.readouterr().out
    assert out.count("DenseLayout") == 2 and out.count("SupportLayout") == 2
