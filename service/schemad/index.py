"""EDGE: the graph index, so "nothing to do" is decided without Alembic.

``schemad index`` (the image runs it at build time) writes
``schemad-index.json`` into the migrations directory: every revision's id,
parents and message, the heads, each file's checksum, the resolution of the
usual targets, where ``env.py`` keeps the version table when its source
says so plainly, and a fingerprint of every file the index was built from
(path, size, modification time).

A command that finds the index, and every file exactly as the index
recorded it, plans from it without importing Alembic or any revision
module; the moment there is work to do (or on any doubt: a changed file, a
target spec the index did not resolve, an ``env.py`` whose version table is
computed) schemad takes the full path and loads the scripts through Alembic
as it always does. Standard library only, besides schemad's own plain data.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemad import __version__
from schemad.model import Graph, Layout, Revision, Target

INDEX_NAME = "schemad-index.json"
FORMAT = 1
DEFAULT_SCRIPT_LOCATION = "migrations"
# Targets resolved when the index is built; any other spec takes the full path.
INDEXED_TARGETS = ("head", "heads", "base")


@dataclass(frozen=True)
class IndexedScripts:
    """The scripts as the index knows them: what planning needs, no Alembic."""

    graph: Graph
    checksums: Mapping[str, str | None]
    targets: Mapping[str, Target]
    layout: Layout
    """Where env.py keeps the version table, as its source says plainly."""
    fingerprint: tuple[tuple[str, int], ...]
    loaded_at_ns: int
    from_index: bool = True

    def resolve(self, spec: str) -> Target:
        if spec in self.targets:
            return self.targets[spec]
        if spec in self.graph.revisions:  # a full id resolves to itself
            return Target(spec, (spec,))
        raise LookupError(spec)  # pragma: no cover - checked by usable()

    def can_resolve(self, spec: str) -> bool:
        return spec in self.targets or spec in self.graph.revisions


def script_directory(*, alembic_config: Path | None, script_location: str | None) -> Path | None:
    """The migrations directory as Alembic would find it, read with the
    standard library only; None when only Alembic could tell (a
    ``package:resource`` location, a file that does not parse)."""
    if script_location is not None:
        return None if _is_resource(script_location) else Path(script_location).absolute()
    try:
        ini, toml = config_files(alembic_config)
        location, base = _ini_location(ini) if ini else (None, None)
        if location is None and toml is not None:
            location, base = _toml_location(toml)
    except (OSError, configparser.Error, tomllib.TOMLDecodeError, ValueError, KeyError):
        return None
    if location is None:
        return Path(DEFAULT_SCRIPT_LOCATION).absolute()
    if _is_resource(location):
        return None
    path = Path(location)
    return path if path.is_absolute() else (base or Path.cwd()) / path


def config_files(named: Path | None) -> tuple[Path | None, Path | None]:
    """The ini and the pyproject.toml to read, as Alembic would pair them.

    Raises:
        FileNotFoundError: ``named`` does not exist.
    """
    if named is None:
        ini, toml = Path("alembic.ini"), Path("pyproject.toml")
        return (ini.absolute() if ini.is_file() else None), with_alembic_table(toml)
    if not named.is_file():
        raise FileNotFoundError(named)
    named = named.absolute()
    if named.suffix == ".toml":
        beside = named.with_name("alembic.ini")
        return (beside if beside.is_file() else None), named
    return named, with_alembic_table(named.with_name("pyproject.toml"))


def with_alembic_table(toml: Path) -> Path | None:
    """``toml`` if it is a pyproject.toml with a ``[tool.alembic]`` table."""
    if not toml.is_file():
        return None
    try:
        with toml.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # not Alembic's: a broken pyproject.toml of another tool
    return toml.absolute() if "alembic" in data.get("tool", {}) else None


def _ini_location(ini: Path) -> tuple[str | None, Path]:
    parser = configparser.ConfigParser({"here": ini.parent.as_posix()})
    with ini.open(encoding="utf-8") as handle:
        parser.read_file(handle)
    if not parser.has_option("alembic", "script_location"):
        return None, ini.parent
    return parser.get("alembic", "script_location"), ini.parent


def _toml_location(toml: Path) -> tuple[str | None, Path]:
    with toml.open("rb") as handle:
        table = tomllib.load(handle).get("tool", {}).get("alembic", {})
    value = table.get("script_location")
    if not isinstance(value, str):
        return None, toml.parent
    return value.replace("%(here)s", toml.parent.as_posix()), toml.parent


def _is_resource(location: str) -> bool:
    return ":" in location and not os.path.isabs(location)


def fingerprint(roots: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """Every file under ``roots`` (not ``__pycache__``, not the index): path,
    size and modification time."""
    entries: dict[str, tuple[int, int]] = {}
    for root in roots:
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for name in files:
                if name == INDEX_NAME:
                    continue
                path = os.path.join(directory, name)
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                entries[path] = (info.st_size, info.st_mtime_ns)
    return tuple(sorted((path, size, mtime) for path, (size, mtime) in entries.items()))


def directory_times(roots: Sequence[Path]) -> tuple[tuple[str, int], ...]:
    """Modification times of the directories under ``roots`` (cheap reload checks)."""
    entries = []
    for root in roots:
        for directory, subdirs, _files in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            try:
                entries.append((directory, os.stat(directory).st_mtime_ns))
            except OSError:
                continue
    return tuple(entries)


def fingerprint_changed(
    times: tuple[tuple[str, int], ...], *, loaded_at_ns: int, settle_ns: int
) -> bool:
    """Whether the directories changed since ``times`` were taken.

    A directory modified within ``settle_ns`` before loading may still be
    receiving a file; such a load is never trusted for long.
    """
    if any(loaded_at_ns - mtime < settle_ns for _path, mtime in times):
        return True
    for path, mtime in times:
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def static_layout(env_py: Path) -> dict[str, Any] | None:
    """Where env.py keeps the version table, read from its source.

    Returns the ``version_table``/``version_table_schema`` keywords its
    ``context.configure()`` calls pass as literals (None for one not given),
    or None when only running env.py can tell: a computed value (a tenant
    schema from ``-x``), ``**options``, or calls that disagree.
    """
    try:
        tree = ast.parse(env_py.read_text(encoding="utf-8"), str(env_py))
    except (OSError, SyntaxError, ValueError):
        return None
    found: set[tuple[str | None, str | None]] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _calls_configure(node.func)):
            continue
        if any(keyword.arg is None for keyword in node.keywords):
            return None  # **options
        values: dict[str, str | None] = {}
        for keyword in node.keywords:
            if keyword.arg in ("version_table", "version_table_schema"):
                if not isinstance(keyword.value, ast.Constant):
                    return None
                value = keyword.value.value
                if value is not None and not isinstance(value, str):
                    return None
                values[keyword.arg] = value
        found.add((values.get("version_table"), values.get("version_table_schema")))
    if len(found) != 1:
        return None
    table, schema = found.pop()
    return {"version_table": table, "version_table_schema": schema}


def _calls_configure(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and func.attr == "configure"


def write(directory: Path, document: dict[str, Any]) -> Path:
    """Write the index into the migrations directory; return its path."""
    path = directory / INDEX_NAME
    path.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")
    return path


def load(
    directory: Path,
    *,
    version_table: str,
    version_table_schema: str | None,
    explicit: bool,
) -> IndexedScripts | None:
    """The scripts from ``directory``'s index, or None on any doubt."""
    try:
        document = json.loads((directory / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if document.get("format") != FORMAT or document.get("schemad") != __version__:
        return None
    roots = [Path(root) for root in document.get("roots", [])]
    recorded = tuple(tuple(entry) for entry in document.get("files", []))
    if not roots or fingerprint(roots) != recorded:
        return None
    layout = _layout(document.get("layout"), version_table, version_table_schema, explicit)
    if layout is None:
        return None  # only running env.py can tell where the version table is
    revisions = {
        entry["id"]: Revision(entry["id"], tuple(entry["parents"]), entry["message"])
        for entry in document["revisions"]
    }
    graph = Graph(revisions, tuple(document["order"]), tuple(document["heads"]))
    targets = {
        spec: Target(
            spec,
            tuple(value["revisions"]) if value["revisions"] is not None else None,
            value["problem"],
            value["detail"],
        )
        for spec, value in document["targets"].items()
    }
    return IndexedScripts(
        graph=graph,
        checksums=document["checksums"],
        targets=targets,
        layout=layout,
        fingerprint=directory_times(roots),
        loaded_at_ns=time.time_ns(),
    )


def _layout(
    recorded: dict[str, Any] | None,
    version_table: str,
    version_table_schema: str | None,
    explicit: bool,
) -> Layout | None:
    if recorded is None:
        return None
    table = recorded["version_table"] or version_table
    schema = (
        recorded["version_table_schema"]
        if recorded["version_table_schema"] is not None
        else version_table_schema
    )
    if explicit and (table, schema) != (version_table, version_table_schema):
        return None  # the full path reports the disagreement
    return Layout(table, schema)


def document(
    *,
    roots: Sequence[Path],
    graph: Graph,
    checksums: Mapping[str, str | None],
    targets: Mapping[str, Target],
    env_py: Path,
) -> dict[str, Any]:
    """The index's content, as :func:`write` stores it."""
    return {
        "format": FORMAT,
        "schemad": __version__,
        "roots": [str(root) for root in roots],
        "files": [list(entry) for entry in fingerprint(roots)],
        "revisions": [
            {"id": rev.id, "parents": list(rev.parents), "message": rev.message}
            for rev in (graph.revisions[r] for r in graph.order)
        ],
        "order": list(graph.order),
        "heads": list(graph.heads),
        "checksums": dict(checksums),
        "targets": {
            spec: {
                "revisions": list(t.revisions) if t.revisions is not None else None,
                "problem": t.problem,
                "detail": t.detail,
            }
            for spec, t in targets.items()
        },
        "layout": static_layout(env_py),
    }


def iter_roots(script_dir: Path, version_locations: Sequence[str]) -> Iterator[Path]:
    """The directories an index covers: the script directory and every
    version location outside it."""
    seen: list[Path] = []
    for root in (script_dir, *map(Path, version_locations)):
        root = root.absolute()
        if not any(root == s or s in root.parents for s in seen):
            seen.append(root)
            yield root
