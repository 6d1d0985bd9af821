"""Every benchmark script starts as documented (``python benchmarks/NAME.py``): its imports resolve
from the script's folder (a module there must not shadow a package) and it has a --help."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted(p for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py") if p.name != "baselines.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_the_benchmark_starts_and_has_help(script):
    p = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                       cwd=script.parents[1])
    assert p.returncode == 0, p.stderr
    assert "usage:" in p.stdout


def test_sequence_split_quick_run_agrees():
    """The hyformer benchmark's smoke run: every cell times both paths and split agrees with full."""
    import json

    script = Path(__file__).parents[1] / "benchmarks" / "sequence_split.py"
    p = subprocess.run([sys.executable, str(script), "--cpu", "--quick", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=script.parents[1])
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout.splitlines()[-1])["results"]
    assert results and all(r["agrees"] and r["split_cand_per_s"] > 0 for r in results)
