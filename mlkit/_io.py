"""File and process helpers every floor uses: atomic, durable writes and small facts.

The ground floor: nothing here imports mlkit, so any module may import it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False, allow_nan=True) + "\n"
    write_text(path, text)


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; records are shared files
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def append_jsonl(path: str | Path, row: dict[str, Any], *, sync: bool = True) -> None:
    """Append one JSON line, so a kill loses at most the line in flight.

    ``sync=False`` leaves the line with the OS (a killed process loses nothing; a machine
    crash may lose the last lines) until ``fsync_file``: for rows written many times a
    second, where an fsync each was 1% of a short training run.
    """
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_jsonable(row)) + "\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def fsync_file(path: str | Path) -> None:
    """Force a file's appended lines to disk (see ``append_jsonl``); no file, no-op."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
        fsync_file(path)


def _jsonable(value: Any) -> Any:
    """Convert numpy and torch scalars, paths and tuples into JSON builtins."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hostname() -> str:
    import socket

    return socket.gethostname()


_HIDDEN = "***"  # what a secret reads as wherever it is shown


def redact(url: str) -> str:
    """The URL without its secrets, for anything that is written down or shown.

    A URL SQLAlchemy parses comes back as SQLAlchemy renders it with the password hidden
    (``postgresql://me:***@host/db``), and ``?password=`` query values hidden too. A URL with
    nothing to hide, a plain path or a journal URL comes back unchanged, so ``redact(url) !=
    url`` says whether it holds a secret. Never raises: a URL that cannot be parsed keeps
    only what follows its last ``@``.
    """
    if not isinstance(url, str) or "://" not in url:
        return url
    parsed = _parse_url(url)
    if parsed is None:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{_HIDDEN}@{rest.rpartition('@')[2]}" if "@" in rest else url
    keys = _secret_keys(parsed)
    if not parsed.password and not keys:
        return url
    if keys:
        parsed = parsed.update_query_dict(dict.fromkeys(keys, _HIDDEN))
    # SQLAlchemy percent-encodes query values: the marker reads as *** again.
    return parsed.render_as_string(hide_password=True).replace(quote(_HIDDEN, safe=""), _HIDDEN)


def redact_text(text: str, url: str) -> str:
    """``text`` with ``url``'s secrets hidden: a driver's error may quote the URL or a password."""
    shown = redact(url)
    if shown == url:
        return text
    text = text.replace(url, shown)
    parsed = _parse_url(url)
    if parsed is None:
        return text
    secrets = [parsed.password]
    for key in _secret_keys(parsed):
        value = parsed.query[key]
        secrets.extend([value] if isinstance(value, str) else value)
    for secret in filter(None, secrets):
        # As parsed, and percent-encoded as it may be quoted back
        text = text.replace(secret, _HIDDEN).replace(quote(secret, safe=""), _HIDDEN)
    return text


def _parse_url(url: str) -> Any:
    """SQLAlchemy's URL object for ``url``, or None when it cannot parse it."""
    # sqlalchemy takes 0.1 s to import and every module imports this one: only for a URL
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        return None


def _secret_keys(parsed: Any) -> list[str]:
    """The query keys of a parsed URL that hold a password (``password``, ``sslpassword``)."""
    return [key for key in parsed.query if key.lower().endswith("password")]
