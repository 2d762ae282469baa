"""fit, sweep, enhance and the command line give the results recorded in tests/data/golden.json.

The record was first made before the package was reorganised (``python tests/golden.py
--record``); a change of structure must not change one bit of a result.  It was made again
once, when the start's products changed on purpose (G and the Jaccard counts through
float32 BLAS blocks, ``start.crossprod``): every recorded sum moved by 5e-8 to 5e-6 of
itself against the earlier record, within the 1e-4 that other platforms are held to
(docs/notebook/2026-12-07-time-to-result.md).  See golden.py for
what is recorded and how platforms other than the recording's are compared.
"""

import json

import golden
import pytest

RECORD = json.loads(golden.GOLDEN.read_text())
SAME_PLATFORM = golden.platform_id() == RECORD["platform"]


def compare(got, want, where=""):
    if isinstance(want, dict) and "sha256" in want:
        assert got["shape"] == want["shape"] and got["dtype"] == want["dtype"], where
        if SAME_PLATFORM:
            assert got["sha256"] == want["sha256"], f"{where}: not bit-identical"
        else:
            assert got["sum"] == pytest.approx(want["sum"], rel=1e-4, abs=1e-6), where
    elif isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            compare(got[k], want[k], f"{where}/{k}")
    elif isinstance(want, float) and not SAME_PLATFORM:
        assert got == pytest.approx(want, rel=1e-4), where
    else:
        assert got == want, where


@pytest.mark.parametrize("key", sorted(RECORD["results"]))
def test_results_as_recorded(key, tmp_path):
    entry, name = key.split("/")
    args = (name, tmp_path) if entry == "cli" else (name,)
    compare(golden.RUNS[entry](*args), RECORD["results"][key], key)
