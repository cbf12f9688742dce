"""Atomic file writes and JSONL: the one place the kit writes files.

Every file a later stage reads back is written to a temp file in the same folder, fsynced and renamed
into place, so an interrupted run never leaves half a file behind. JSONL logs that grow by appending
(log.jsonl) are read with `read_jsonl(..., torn_tail="drop")`: a last line cut by a kill or a full
disk is dropped with a warning instead of making every resume fail.
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

from premem_kit.core.errors import KitError

_UMASK = os.umask(0)
os.umask(_UMASK)


class JsonlError(KitError, ValueError):
    """A malformed JSONL file; the message names the file and line."""


def _publish(tmp: str, path: Path) -> None:
    """Give the temp file ordinary permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


class WriteError(KitError, OSError):
    """A file the kit could not write: a full disk, a read-only or forbidden folder; the message names it."""


# errno -> what to tell the user; other OSErrors stay tracebacks (they are bugs or stranger trouble)
UNWRITABLE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied", errno.ENOTDIR: "a part of the path is a file, not a folder"}


def atomic_write_with(path, write) -> None:
    """Call write(binary_file) on a temp file beside `path`, fsync, then rename it to `path`. A full disk
    or a read-only folder is a WriteError naming the file; nothing half-written is left, so the same
    command resumes once there is room."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise_unwritable(e, path)
        raise


def raise_unwritable(e: OSError, path) -> None:
    """A full disk, a read-only or forbidden place as a WriteError naming `path`; other errors unchanged."""
    if e.errno in UNWRITABLE:
        raise WriteError(f"cannot write {path}: {UNWRITABLE[e.errno]} ({e.strerror}); nothing half-written was "
                         f"left, so the same command resumes once it can write there") from None


def atomic_write_bytes(path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_parquet(path, df) -> None:
    """A pandas DataFrame as Parquet, atomically."""
    atomic_write_with(path, lambda f: df.to_parquet(f, index=False))


def write_jsonl(path, rows) -> None:
    """Rows as JSON lines, atomically (the whole file at once)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_jsonl(path, row) -> None:
    """Append one line (logs written as training goes); readers drop a torn last line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def append_jsonl_durable(path, rows) -> None:
    """Append rows (one line each), flushed and fsynced before returning: for caches whose every
    finished entry must survive a kill (curate.py's sample and response caches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_repaired(path, required=()) -> list[dict]:
    """Rows of an append-only JSONL file after repairing an interrupted append: a torn last line is
    dropped, and the file is rewritten atomically when its end was not clean, so that the next
    append starts on a line of its own. A malformed line elsewhere is a JsonlError."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the repair below is the expected outcome, not news
        rows = read_jsonl(path, required, torn_tail="drop")
    text = path.read_text(encoding="utf-8")
    if text and (not text.endswith("\n") or len(rows) < sum(1 for ln in text.splitlines() if ln.strip())):
        write_jsonl(path, rows)
    return rows


def read_jsonl(path, required=(), torn_tail: str = "error", numbered: bool = False) -> list:
    """Rows of a JSONL file. A malformed line is an error naming the file and line; with
    torn_tail="drop" a malformed *last* line (an interrupted append) is dropped with a warning.
    numbered=True gives (line number, row) pairs, for messages and ids that name a row's line."""
    path = Path(path)
    if path.is_dir():
        raise JsonlError(f"{path}: is a folder, expected a JSONL file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise JsonlError(f"{path}: not UTF-8 text (byte {e.start})") from None
    nonblank = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    rows = []
    for k, (lineno, line) in enumerate(nonblank):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail == "drop" and k == len(nonblank) - 1:
                warnings.warn(f"{path}, line {lineno}: dropped a torn last line (an interrupted write)")
                break
            raise JsonlError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise JsonlError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in required if key not in row]
        if missing:
            raise JsonlError(f"{path}, line {lineno}: missing key(s) {missing}; expected {list(required)}")
        rows.append((lineno, row) if numbered else row)
    return rows


def json_safe(v):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python numbers."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)) and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class LockedError(KitError, RuntimeError):
    """Another process holds the lock; the message names it."""


class FileLock:
    """An exclusive, non-blocking flock on `path`, released when the process ends (even by kill -9).

    The file holds the holder's pid and command so that a refused second process can name it.
    """

    def __init__(self, path, what: str):
        self.path, self.what = Path(path), what
        self.f = None

    def __enter__(self):
        import fcntl
        import sys

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a+", encoding="utf-8")
        except OSError as e:
            raise_unwritable(e, self.path)
            raise
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            holder = self.f.read().strip() or "another process"
            self.f.close()
            raise LockedError(f"{self.what} is in use by {holder} (lock file {self.path}); wait for it to "
                              f"finish, or stop it") from None
        try:
            self.f.seek(0)
            self.f.truncate()
            self.f.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n")
            self.f.flush()
        except OSError as e:
            self.f.close()
            raise_unwritable(e, self.path)
            raise
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()
            self.f = None


def _unique_mapping(loader, node, deep=False):
    """PyYAML keeps the last of two equal keys without a word; a file the kit reads must not."""
    import yaml

    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


def yaml_loader():
    """yaml.SafeLoader that refuses duplicate keys at any depth."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
    return UniqueKeyLoader


def read_yaml_mapping(path, error, what: str, near: str = "") -> dict:
    """A YAML file that must hold a mapping (config, run config, grid): its dict, or `error` naming the
    file and what is wrong (missing, a folder, not UTF-8, not YAML, a duplicate key, not a mapping)."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, expected a YAML file")
    if not path.is_file():
        raise error(f"{what} {path} does not exist{near}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_loader())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data
