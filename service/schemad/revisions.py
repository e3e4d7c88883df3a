"""EDGE: the migration scripts, read through Alembic's ScriptDirectory.

Turns an Alembic project (alembic.ini and/or a migrations directory) into a
plain :class:`~schemad.model.Graph` for the planner, and resolves the target
spec with Alembic's own rules (partial ids, ``label@head``, ``heads``).
"""

from __future__ import annotations

import configparser
import hashlib
import os
import time
import tomllib
import warnings
from argparse import Namespace
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.script.revision import MultipleHeads, RangeNotAncestorError, ResolutionError
from alembic.script.revision import Revision as AlembicRevision
from alembic.util import CommandError
from alembic.util.pyfiles import pyc_file_from_path
from sqlalchemy.engine import URL

from schemad.errors import ConfigError, SchemadError, ScriptError, first_line
from schemad.index import INDEXED_TARGETS, config_files, directory_times, iter_roots
from schemad.index import document as index_document
from schemad.index import write as write_index
from schemad.model import Graph, Revision, Target

DEFAULT_SCRIPT_LOCATION = "migrations"
# Given to Alembic when the project has no alembic.ini, so that an env.py
# calling fileConfig(config.config_file_name) finds a file (see logs.preserved).
FALLBACK_INI = Path(__file__).with_name("fallback.ini")


@dataclass(frozen=True)
class Scripts:
    """A loaded Alembic project: its Config, ScriptDirectory and Graph."""

    config: Config
    directory: ScriptDirectory
    graph: Graph
    fingerprint: tuple[tuple[str, int], ...]
    loaded_at_ns: int
    checksums: Mapping[str, str | None]
    """Each revision file's checksum (see :func:`file_checksum`)."""
    from_index: bool = False

    def resolve(self, spec: str) -> Target:
        """Resolve a target spec (``head``, an id, ``label@head``) to revision ids."""
        return resolve_target(self.directory, spec)


def make_config(
    url: URL | None,
    *,
    alembic_config: Path | None,
    script_location: str | None,
    x_args: Sequence[str] = (),
) -> Config:
    """Build the Alembic Config that schemad runs the project's env.py with.

    The project's configuration is read as Alembic reads it: an ``alembic.ini``,
    a ``pyproject.toml`` with ``[tool.alembic]``, or both side by side
    (``SCHEMAD_ALEMBIC_CONFIG`` names either; unset, the working directory's
    are used when present). Relative paths in them (``script_location``,
    ``version_locations``, ``prepend_sys_path``) are taken relative to the
    file that holds them, so schemad finds the same directories from any
    working directory. ``x_args`` reach env.py as ``alembic -x`` does.

    Raises:
        ConfigError: the named file does not exist or cannot be read.
    """
    try:
        ini, toml = config_files(alembic_config)
    except FileNotFoundError:
        raise ConfigError(
            f"SCHEMAD_ALEMBIC_CONFIG={alembic_config}: no such file; point it at the project's "
            "alembic.ini or pyproject.toml, or unset it and set SCHEMAD_SCRIPT_LOCATION",
            variable="SCHEMAD_ALEMBIC_CONFIG",
        ) from None
    config = Config(
        file_=ini or FALLBACK_INI,
        toml_file=toml,
        cmd_opts=Namespace(x=list(x_args) or None),
    )
    try:
        home = (ini or toml).parent if (ini or toml) else None  # type: ignore[union-attr]
        if home is not None:
            _anchor_paths(config, home, script_location=script_location is None)
        if script_location is not None:
            config.set_main_option("script_location", _escaped(script_location))
        elif home is None:
            # No project file: the default directory, as SCHEMAD_SCRIPT_LOCATION says.
            config.set_main_option("script_location", DEFAULT_SCRIPT_LOCATION)
        if url is not None:
            # set_main_option interpolates '%': a URL-encoded password must be escaped.
            plain = url.render_as_string(hide_password=False)
            config.set_main_option("sqlalchemy.url", _escaped(plain))
        config.get_alembic_option("script_location")  # reads (and interpolates) the files now
    except configparser.Error as exc:
        raise _ini_problem(config, exc) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"SCHEMAD_ALEMBIC_CONFIG={alembic_config}: the file is not UTF-8 text "
            f"({exc.reason} at byte {exc.start}); point it at the project's alembic.ini",
            variable="SCHEMAD_ALEMBIC_CONFIG",
        ) from exc
    except (tomllib.TOMLDecodeError, CommandError) as exc:
        raise ConfigError(
            f"SCHEMAD_ALEMBIC_CONFIG={toml}: {first_line(exc, with_type=False)}; fix its "
            "[tool.alembic] table",
            variable="SCHEMAD_ALEMBIC_CONFIG",
        ) from exc
    config.attributes["schemad"] = True
    return config


def _anchor_paths(config: Config, base: Path, *, script_location: bool) -> None:
    """Relative script, version and sys.path entries, anchored at the config file."""
    location = config.get_alembic_option("script_location")
    if script_location and location is not None and _relative_path(location):
        config.set_main_option("script_location", _escaped(str(base / location)))
    for option, read in (
        ("version_locations", config.get_version_locations_list),
        ("prepend_sys_path", config.get_prepend_sys_paths_list),
    ):
        entries = read()
        if entries:
            anchored = [str(base / e) if _relative_path(e) else e for e in entries]
            config.set_main_option(option, _escaped("\n".join(anchored)))
    # The entries just written are one per line, whatever the files used.
    config.set_main_option("path_separator", "newline")


def _relative_path(location: str) -> bool:
    """A relative filesystem path (not ``package:resource``, not absolute)."""
    return ":" not in location and not os.path.isabs(location)


def _escaped(value: str) -> str:
    return value.replace("%", "%%")


def load_scripts(config: Config) -> Scripts:
    """Load every revision file and build the graph.

    Raises:
        ScriptError: the directory is missing, a revision file does not
            import, or the graph is broken (cycle, missing parent).
    """
    loaded_at_ns = time.time_ns()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # Alembic's deprecation notices (an ini without path_separator) are
            # not problems with the scripts: plain alembic only prints them.
            warnings.simplefilter("ignore", DeprecationWarning)
            directory = ScriptDirectory.from_config(config)
            _require_env_py(directory)
            graph, checksums = _graph(directory)
            _require_revisions(directory, graph)
    except (SchemadError, KeyboardInterrupt):
        # schemad's own errors keep their meaning, e.g. `wait`'s deadline
        # (an alarm) firing while the revision files are being read.
        raise
    except configparser.Error as exc:
        raise _ini_problem(config, exc) from exc
    except CommandError as exc:
        raise ScriptError(_script_problem(config, exc)) from exc
    except Warning as exc:
        raise ScriptError(
            f"the migration scripts are inconsistent: {exc}; fix the revision files "
            "(`alembic history` shows the same problem)"
        ) from exc
    except BaseException as exc:  # a revision file that does not import (even sys.exit())
        raise ScriptError(
            f"cannot load the migration scripts in {_location(config)}: "
            f"{first_line(exc)}; fix the revision file "
            "(try `alembic history` to see the same error)"
        ) from exc
    # Taken after loading: importing the revisions may create versions/__pycache__.
    fingerprint = scripts_fingerprint(directory)
    return Scripts(config, directory, graph, fingerprint, loaded_at_ns, checksums)


def _require_revisions(directory: ScriptDirectory, graph: Graph) -> None:
    # Zero revisions is how a missing or empty volume mount looks; treating it
    # as "in sync" would hide the broken mount.
    if not graph.revisions:
        locations = [str(p) for p in directory._version_locations]
        for location in locations:
            if os.path.isdir(location) and not os.access(location, os.R_OK | os.X_OK):
                raise ScriptError(
                    f"cannot read the revision directory {location}: permission denied for "
                    f"uid {os.getuid()}; make it (and its files) readable by schemad"
                )
        raise ScriptError(
            f"the migrations directory {directory.dir} has no revision files (looked in "
            f"{', '.join(locations)}); check that the migrations are copied or mounted there, or "
            "create the first one with `alembic revision -m ...`"
        )


def _require_env_py(directory: ScriptDirectory) -> None:
    # Alembic only looks for env.py when a command runs it; without this check
    # `status` and `plan` would look fine and `upgrade` fail under the lock.
    path = directory.env_py_location
    if not os.path.exists(path):
        if pyc_file_from_path(path) is None:
            raise ScriptError(
                f"the migrations directory {directory.dir} has no env.py; copy the "
                "project's env.py there (or schemad's migrations/env.py), or point "
                "SCHEMAD_SCRIPT_LOCATION at the directory that has it"
            )
        return
    try:
        with open(path, "rb") as source:
            compile(source.read(), path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ScriptError(
            f"{path} does not compile: SyntaxError: {exc.msg} (line {exc.lineno}); "
            "fix env.py (`alembic upgrade head` shows the same error)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ScriptError(f"cannot read {path}: {first_line(exc)}") from exc


def scripts_fingerprint(directory: ScriptDirectory) -> tuple[tuple[str, int], ...]:
    """Modification times of the migrations directory, every version location
    and their subdirectories.

    Adding, removing or renaming a revision file (and Kubernetes' symlink swap
    when a mounted ConfigMap changes) updates its directory's mtime, so a
    no-op pass costs a few ``stat`` calls however many revisions there are.
    Revision files are not expected to change in place once applied.
    """
    return directory_times(list(_roots(directory)))


def _roots(directory: ScriptDirectory) -> list[Path]:
    return list(iter_roots(Path(directory.dir), [str(p) for p in directory._version_locations]))


def build_index(scripts: Scripts) -> Path:
    """Write ``schemad-index.json`` for ``scripts`` into its migrations directory.

    Raises:
        OSError: the directory is not writable.
    """
    directory = scripts.directory
    roots = _roots(directory)
    content = index_document(
        roots=roots,
        graph=scripts.graph,
        checksums=scripts.checksums,
        targets={spec: scripts.resolve(spec) for spec in INDEXED_TARGETS},
        env_py=Path(directory.env_py_location),
    )
    return write_index(Path(directory.dir), content)


def resolve_target(directory: ScriptDirectory, spec: str) -> Target:
    """Resolve ``spec`` with Alembic's rules; never raises for a bad spec."""
    try:
        found = directory.revision_map.get_revisions(spec)
    except MultipleHeads as exc:
        return Target(spec, None, "multiple_heads", ", ".join(exc.heads))
    except (ResolutionError, RangeNotAncestorError, CommandError, ValueError) as exc:
        return Target(spec, None, "unknown_target", first_line(exc, with_type=False))
    revisions = tuple(sorted(rev.revision for rev in found if isinstance(rev, AlembicRevision)))
    return Target(spec, revisions)


def file_checksum(path: str | Path) -> str | None:
    """SHA-256 of a revision file, blind to line endings and trailing blanks."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    lines = raw.decode("utf-8", errors="replace").splitlines()
    normalised = "\n".join(line.rstrip() for line in lines).rstrip("\n") + "\n"
    return hashlib.sha256(normalised.encode()).hexdigest()


def _graph(directory: ScriptDirectory) -> tuple[Graph, dict[str, str | None]]:
    newest_first = list(directory.walk_revisions("base", "heads"))
    checksums = {script.revision: file_checksum(script.path) for script in newest_first}
    revisions = {
        script.revision: Revision(
            script.revision,
            tuple(script._all_down_revisions),
            (script.doc or "").strip(),
        )
        for script in newest_first
    }
    order = tuple(script.revision for script in reversed(newest_first))
    return Graph(revisions, order, tuple(sorted(directory.get_heads()))), checksums


def _ini_problem(config: Config, exc: configparser.Error) -> ConfigError:
    return ConfigError(
        f"SCHEMAD_ALEMBIC_CONFIG={config.config_file_name}: {first_line(exc, with_type=False)}; "
        "fix the ini file (`alembic current` fails on it the same way)",
        variable="SCHEMAD_ALEMBIC_CONFIG",
    )


def _script_problem(config: Config, exc: CommandError) -> str:
    text = first_line(exc, with_type=False)
    if "doesn't exist" in text or "not a directory" in text.lower():
        return (
            f"migrations directory {_location(config)} does not exist; set "
            "SCHEMAD_SCRIPT_LOCATION to the directory holding env.py and versions/ "
            "(or SCHEMAD_ALEMBIC_CONFIG to the project's alembic.ini)"
        )
    if "script_location" in text:
        return (
            f"{config.config_file_name} has no script_location in its [alembic] section "
            "(nor pyproject.toml in [tool.alembic]); add it, or set SCHEMAD_SCRIPT_LOCATION "
            "to the migrations directory"
        )
    return (
        f"cannot load the migration scripts in {_location(config)}: {text}; fix the "
        "revision files (`alembic history` shows the same error)"
    )


def _location(config: Config) -> str:
    return config.get_alembic_option("script_location") or DEFAULT_SCRIPT_LOCATION
