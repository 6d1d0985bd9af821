"""The folder layout is the architecture: imports point one way.

cli, pipelines -> jobs -> (ugsep, feature_store); serving -> (ugsep, feature_store); ugsep imports
none of them. Checked on the source, so a lazy import inside a function counts too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ugsep", "jobs", "feature_store", "serving", "cli", "pipelines")
MAY_IMPORT = {
    "ugsep": set(),
    "feature_store": {"ugsep"},
    "jobs": {"ugsep", "feature_store"},
    "serving": {"ugsep", "feature_store"},
    "cli": {"ugsep", "feature_store", "jobs", "serving"},
    "pipelines": set(),  # deployable artifacts: they call the CLI, never import the code
}
# the Feast CLI's entry file (`cd feature_store/repo && feast apply`) names the jobs' tables
ENTRY_FILES = {"feature_store/repo/ugsep_repo.py"}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in ENTRY_FILES:
            continue
        bad = imported_packages(path) - MAY_IMPORT[package] - {package}
        if bad:
            wrong[rel] = sorted(bad)
    assert not wrong, f"{package} may import only {sorted(MAY_IMPORT[package])}: {wrong}"
