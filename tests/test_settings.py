"""anomseg.settings: the one reader of the ANOMSEG_* variables, and no other module reads them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from anomseg import settings
from anomseg.errors import InputError
from anomseg.imageio import max_pixels
from anomseg.shared import shared_dir

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("anomseg", "db", "training", "workbench", "dashboard")


def test_workspace_default_env_and_explicit(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.WORKSPACE_ENV, raising=False)
    assert settings.workspace_dir() == Path("workspace")
    monkeypatch.setenv(settings.WORKSPACE_ENV, "  ")  # blank = unset
    assert settings.workspace_dir() == Path("workspace")
    monkeypatch.setenv(settings.WORKSPACE_ENV, str(tmp_path))
    assert settings.workspace_dir() == tmp_path
    assert settings.workspace_dir(tmp_path / "x") == tmp_path / "x"  # explicit wins


def test_db_url_and_store_resolution(monkeypatch, tmp_path):
    from db.engine import resolve_url, sqlite_url

    monkeypatch.delenv(settings.DB_URL_ENV, raising=False)
    monkeypatch.setenv(settings.WORKSPACE_ENV, str(tmp_path))
    assert resolve_url() == sqlite_url(tmp_path / "anomseg.sqlite")
    monkeypatch.setenv(settings.DB_URL_ENV, "sqlite:////elsewhere.db")
    assert settings.db_url() == "sqlite:////elsewhere.db" == resolve_url()
    # an explicit workspace beats the URL variable, as before
    assert resolve_url(workspace=tmp_path / "w") == sqlite_url(tmp_path / "w" / "anomseg.sqlite")


def test_max_pixels_env(monkeypatch):
    monkeypatch.setenv(settings.MAX_PIXELS_ENV, "1234")
    assert max_pixels() == 1234
    monkeypatch.setenv(settings.MAX_PIXELS_ENV, "")
    assert max_pixels() == settings.DEFAULT_MAX_PIXELS
    for bad in ("many", "-5"):
        monkeypatch.setenv(settings.MAX_PIXELS_ENV, bad)
        with pytest.raises(InputError, match=settings.MAX_PIXELS_ENV):
            max_pixels()


def test_shared_env(monkeypatch, tmp_path):
    monkeypatch.setenv(settings.SHARED_ENV, str(tmp_path))
    assert shared_dir() == tmp_path
    monkeypatch.setenv(settings.SHARED_ENV, str(tmp_path / "absent"))
    assert shared_dir() is None


def _env_reads(tree: ast.AST) -> list[str]:
    """String constants starting ANOMSEG_ passed to os.environ.get / os.getenv / os.environ[...]."""
    found = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and node.args:
            f = ast.unparse(node.func)
            if f in ("os.environ.get", "os.getenv", "environ.get", "getenv"):
                target = node.args[0]
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ",):
            target = node.slice
        if isinstance(target, ast.Constant) and str(target.value).startswith("ANOMSEG_"):
            found.append(str(target.value))
    return found


def test_no_other_module_reads_anomseg_variables():
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "anomseg" / "settings.py":
                continue
            reads = _env_reads(ast.parse(path.read_text()))
            offenders += [f"{path.relative_to(ROOT)}: {r}" for r in reads]
    assert not offenders, offenders
