"""The package's layout: imports run one way (the contracts in pyproject.toml, checked by
import-linter) and README's module table names every module there is."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the package under `root` (the working directory goes first on its
    path, so a copy is linted, not the installed package)."""
    return subprocess.run(
        [str(LINT), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_imports_run_one_way() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def lint_with(copy: Path, module: str, line: str) -> str:
    """import-linter on `copy` with `line` added to `module`, which is restored after: the
    report, in one line."""
    path = copy / module
    original = path.read_text()
    path.write_text(original + line + "  # noqa\n")
    try:
        result = lint_imports(copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout
    return " ".join(result.stdout.split())


def test_a_wrong_import_breaks_the_contracts(tmp_path: Path) -> None:
    """The check is not vacuous: in a copy of the package, a vessel that imports the shell's
    renderer and an HTTP endpoint that imports the pipeline are both reported, with the
    chain of imports that breaks each rule."""
    shutil.copytree(ROOT / "aisfusion", tmp_path / "aisfusion")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    out = lint_with(
        tmp_path, "aisfusion/actors/vessel.py", "from aisfusion.ops import shell_render"
    )
    assert "The core never imports the surfaces, the tools or the entry points BROKEN" in out
    assert "aisfusion.actors.vessel -> aisfusion.ops.shell_render" in out
    out = lint_with(tmp_path, "aisfusion/ops/http.py", "from aisfusion.pipeline import Pipeline")
    assert "aisfusion.ops is not allowed to import aisfusion.pipeline" in out
    assert "The core never imports the surfaces, the tools or the entry points KEPT" in out
    assert lint_imports(tmp_path).returncode == 0  # restored: the copy is clean again


def test_the_readme_module_table_matches_the_tree() -> None:
    """Every module in the package is in README's table (a directory row covers its
    modules), and every module the table names exists."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| module | owns |", 1)[1].split("\n\n", 1)[0]
    named = {
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`([\w/.]+)`", row.split("|")[1])
    }
    package = ROOT / "aisfusion"
    for name in named:
        assert (package / name).exists(), f"README names {name}, which is not in the package"
    modules = {
        p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"
    }
    folders = [d for d in named if d.endswith("/")]
    missing = {m for m in modules if m not in named and not any(map(m.startswith, folders))}
    assert not missing, f"modules README's table does not name: {sorted(missing)}"
