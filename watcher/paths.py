"""Where specwatch keeps its state: ``--state-dir``, else ``$SPECWATCH_STATE_DIR``, else the user state dir."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from platformdirs import user_cache_dir, user_state_dir

DB_NAME = "specwatch.db"


def state_dir(environ: Mapping[str, str], override: str | Path | None = None) -> Path:
    """The state directory, created with mode 0700 so other users cannot read incidents or tokens."""
    if override:
        path = Path(override)
    elif environ.get("SPECWATCH_STATE_DIR"):
        path = Path(environ["SPECWATCH_STATE_DIR"])
    else:
        path = Path(user_state_dir("specwatch"))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def db_path(environ: Mapping[str, str], override: str | Path | None = None) -> Path:
    """The SQLite database shared by every specwatch process of this user."""
    return state_dir(environ, override) / DB_NAME


def catalogue_cache() -> Path:
    """Where the parsed pattern files are kept (the user cache dir; it only spares parsing them again)."""
    return Path(user_cache_dir("specwatch")) / "catalogue"
