"""The shape of the packages: the public surface, import order, and the one-way flow of imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kern_events
import projections

ROOT = Path(__file__).parent.parent
PUBLIC_MODULES = [
    "kern_events",
    "kern_events.events",
    "kern_events.records",
    "kern_events.errors",
    "kern_events.codec",
    "kern_events.store",
    "kern_events.backend",
    "kern_events.testing",
    "kern_events.db",
    "kern_events.checkpoints",
    "kern_events.timetravel",
    "kern_events.replay",
    "kern_events.ui",
    "kern_events.retention",
    "kern_events.transfer",
    "kern_events.encryption",
    "kern_events.cli",
    "kern_events.stores.memory",
    "kern_events.stores.sqlite",
    "kern_events.stores.postgres",
    "kern_events.stores.nats",
    "kern_events.subscription",
    "kern_events.sessions",
    "kern_events.runtime",
    "projections",
    "projections.session",
    "projections.runs",
    "projections.history",
]
# The write side's foundation: it must never need the read side.
FOUNDATION = [
    "events",
    "records",
    "errors",
    "codec",
    "store",
    "backend",
    "subscription",
    "_index",
    "_validate",
    "_registry",
    "stores",
]


@pytest.mark.parametrize("package", [kern_events, projections])
def test_every_public_name_resolves(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(package, name) is not None, name


def test_public_names_of_the_modules_are_re_exported() -> None:
    from kern_events import errors, events, records

    for module in (errors, events, records):
        missing = set(module.__all__) - set(kern_events.__all__) - {"EVENT_TYPES", "MediaKind", "Role"}
        assert not missing, f"{module.__name__} names not exported from kern_events: {missing}"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_each_public_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT)


def test_importing_kern_events_loads_no_database_driver() -> None:
    code = "import sys, kern_events; print(sorted(m for m in ('asyncpg', 'aiosqlite') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_write_side_foundation_never_imports_the_read_side() -> None:
    for name in FOUNDATION:
        target = ROOT / "kern_events" / name
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        for path in files:
            offending = {module for module in _imports(path) if module.split(".")[0] == "projections"}
            assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


def test_projections_import_kern_events_submodules_never_the_root() -> None:
    for path in sorted((ROOT / "projections").rglob("*.py")):
        assert "kern_events" not in _imports(path), f"{path.relative_to(ROOT)} imports the kern_events root"


def test_our_backends_build_on_the_public_backend_kit() -> None:
    """What a third party may not import, our own backends do not import either: the in-memory
    store uses public modules only; the SQL ones add only their shared SQL and driver helpers."""
    memory = _imports(ROOT / "kern_events" / "stores" / "memory.py")
    assert not {module for module in memory if "._" in module}, memory
    for name in ("sqlite", "postgres"):
        imported = _imports(ROOT / "kern_events" / "stores" / f"{name}.py")
        assert "kern_events.backend" in imported
        assert not imported & {"kern_events._index", "kern_events.stores._base"}, f"{name}: {imported}"


def test_the_backend_kit_and_the_conformance_kit_carry_the_optional_capabilities() -> None:
    """What a third party needs for append_many and truncate_before is public: the hooks' part type,
    the truncation rule and the error, and the suite's parts and capability flags."""
    from kern_events import backend, testing

    assert {"PendingAppend", "SessionAppend", "check_truncation", "UnsupportedError"} <= set(backend.__all__)
    assert {"MultiAppendTests", "TruncationTests"} <= set(testing.__all__)
    assert testing.Backend.appends_many is True and testing.Backend.truncates is True
    assert {"SessionAppend", "TruncatedError", "UnsupportedError", "TRUNCATION_SNAPSHOT"} <= set(kern_events.__all__)


def test_export_and_import_are_public() -> None:
    """The migration path's API (#13.2): the functions, their report and their error, from the root."""
    from kern_events import transfer

    assert set(transfer.__all__) - {"EXPORT_FORMAT", "EXPORT_FORMAT_VERSION"} <= set(kern_events.__all__)
    assert {"export_events", "import_events", "ImportReport", "ExportFileError"} <= set(kern_events.__all__)
    assert issubclass(kern_events.ExportFileError, kern_events.InvalidArgumentError)
