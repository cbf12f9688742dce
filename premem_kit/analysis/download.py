"""Download the authors' published per-example results (Kang et al., ICML 2025) with checksums.

data/kang2025_manifest.json lists, at a pinned commit of github.com/katiekang1998/reasoning_generalization
(MIT), every array `premem.py import-published` reads from its `ckpts/` folder, with size and sha256.
`fetch` downloads the chosen files into OUT (the authors' layout: OUT/<run>/checkpoint-<step>/<file>),
with a progress bar in bytes. A file is written as OUT/...part, resumed with an HTTP Range request after
an interruption, checked against its sha256, and only then renamed into place; a file already there with
the right checksum is skipped, so a rerun finishes what is missing.

The network, as a careless or hostile server meets it:
  * deadline: a file is given up when nothing arrives from the server for `timeout` seconds (connecting,
    waiting for the reply, or between two blocks of data), retries and their pauses included; a server that
    accepts and never answers fails in `timeout` seconds (default 20), not minutes. Progress restarts it.
  * credentials: `user:password@` in the base URL is sent as HTTP basic auth (percent-decoded), only to that
    host: never in the URL, never across a redirect. A query (`?token=...`) is kept on every file's URL.
    Every message shows the URL redacted (`***@host`, `?token=***`), and any text from the network is
    stripped of those secrets too.
  * a reply that is not HTTP, an error status, a body cut short or longer than the manifest's size: a
    DownloadError naming the (redacted) URL. Nothing half-made is left: a .part is kept only when it holds
    bytes and the server said it can resume (Accept-Ranges: bytes or a 206 reply); folders this call made
    and left empty are removed.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from premem_kit.core.errors import KitError, warn

MANIFEST = Path(__file__).resolve().parents[2] / "data" / "kang2025_manifest.json"
CHUNK = 1 << 16
DEFAULT_TIMEOUT = 20.0  # seconds with nothing from the server before a file is given up, retries included
RETRIES = 3
BACKOFF = 1.0  # the first pause between tries (s), doubled after each, capped at 10 s and by the deadline
_SAMPLES = re.compile(r"answer_types(\d+)_")


class DownloadError(KitError):
    """A failed or corrupt download; the message names the file and what to do."""


class Remote:
    """A base URL split into what is sent (the URL without credentials, a basic-auth header) and what is
    shown (the URL with the credentials and query values replaced by ***)."""

    def __init__(self, url: str):
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise DownloadError(f"base URL {_rough_redact(url)}: cannot be read (the host or its port)") from None
        userinfo, at, hostport = parts.netloc.rpartition("@")
        self.scheme, self.hostport, self.path, self.query = parts.scheme.lower(), hostport, parts.path, parts.query
        self.has_credentials = bool(at)
        user, _, password = userinfo.partition(":")
        self.user, self.password = urllib.parse.unquote(user), urllib.parse.unquote(password)
        self.secrets = sorted({s for s in (user, password, self.user, self.password) if s}
                              | set(_query_secrets(parts.query)), key=len, reverse=True)
        self.shown_base = self._show(parts.path)
        if self.scheme not in ("http", "https") or not parts.netloc:
            raise DownloadError(f"base URL {_rough_redact(url)!r}: expected http://HOST/... or https://HOST/...")
        if not parts.hostname:
            raise DownloadError(f"base URL {self.shown_base}: no host name")
        if parts.fragment:
            raise DownloadError(f"base URL {self.shown_base}: a #fragment is never sent to a server; remove it")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise DownloadError(f"base URL {self.shown_base}: contains spaces or control characters")
        self.auth = None
        if at:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
            self.auth = f"Basic {token}"
        self.cleartext = at and self.scheme == "http" and not _loopback(parts.hostname)
        self.hostname, self.port = parts.hostname, parts.port or (443 if self.scheme == "https" else 80)

    def _show(self, path: str) -> str:
        cred = "***@" if self.has_credentials else ""
        query = "&".join(f"{p.partition('=')[0]}=***" if "=" in p else "***" for p in self.query.split("&"))
        return f"{self.scheme}://{cred}{self.hostport}{path}" + (f"?{query}" if self.query else "")

    def whole(self) -> tuple[str, str]:
        """(the URL to request, the URL to show) of the URL itself."""
        return urllib.parse.urlunsplit((self.scheme, self.hostport, self.path, self.query, "")), self.shown_base

    def file(self, path: str) -> tuple[str, str]:
        """(the URL to request, the URL to show) of a path below the base."""
        full = self.path.rstrip("/") + "/" + urllib.parse.quote(path, safe="/")
        return urllib.parse.urlunsplit((self.scheme, self.hostport, full, self.query, "")), self._show(full)

    def redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


def _query_secrets(query: str) -> list[str]:
    out = []
    for p in query.split("&") if query else []:
        value = p.partition("=")[2] if "=" in p else p
        out += [value, urllib.parse.unquote_plus(value)]
    return [s for s in out if s]


def _rough_redact(url: str) -> str:
    """For a URL that cannot be read as one: nothing before an @ (credentials), no query; and where the
    host or port cannot be read, not them either."""
    url = re.sub(r"^([A-Za-z][\w+.-]*://)?.*@", r"\1***@", url.split("?")[0]) + ("?***" if "?" in url else "")
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018
    except ValueError:
        url = re.sub(r"//[^/?#]*", "//***", url, count=1)
    return url


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def base_url_arg(text: str) -> str:
    """argparse type of --base-url: the URL is checked while parsing, and the message is redacted."""
    import argparse

    try:
        Remote(text)
    except DownloadError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def load_manifest(path=MANIFEST) -> dict:
    m = json.loads(Path(path).read_text())
    for f in m["files"]:
        if ".." in Path(f["path"]).parts or Path(f["path"]).is_absolute():
            raise DownloadError(f"{path}: file path {f['path']!r} leaves the download folder")
    return m


def select(manifest: dict, tasks=("gsm8k", "math"), samples: int | None = 5) -> list[dict]:
    """The manifest's files of these tasks. Answer-type files: per checkpoint and split, those with
    `samples` samples, or, where there are none, those with the most (what import-published reads by
    default); samples=None keeps them all."""
    if samples is not None and samples < 1:
        raise DownloadError(f"samples must be >= 1 (or None for every answer file), got {samples}")
    keep = [f for f in manifest["files"] if Path(f["path"]).parts[1].split("_")[0] in tasks]
    groups: dict[tuple, list[tuple[int, dict]]] = {}
    out = []
    for f in keep:
        m = _SAMPLES.search(f["path"])
        if not m or samples is None:
            out.append(f)
            continue
        p = Path(f["path"])
        groups.setdefault((p.parent, p.name.split("_")[0]), []).append((int(m.group(1)), f))
    for files in groups.values():
        counts = {n for n, _ in files}
        want = samples if samples in counts else max(counts)
        out += [f for n, f in files if n == want]
    return sorted(out, key=lambda f: f["path"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def destination(out: Path, manifest: dict, f: dict) -> Path:
    """OUT/<path inside the manifest's folder>."""
    rel = Path(f["path"]).relative_to(manifest.get("folder", "ckpts"))
    return Path(out) / rel


class _State:
    """One file's transfer: the deadline (pushed back by every block that arrives), whether the server can
    resume, whether this call wrote into the .part."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.touch()
        self.resumable = self.wrote = False

    def touch(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def left(self) -> float:
        return self.deadline - time.monotonic()


class _Fatal(Exception):
    """A reply no retry mends (not HTTP, an error status): the message, unredacted."""


def fetch_file(url: "str | Remote", dest: Path, size: int, digest: str, bar=None, timeout: float = DEFAULT_TIMEOUT,
               retries: int = RETRIES, path: str | None = None) -> bool:
    """Download one file (resuming a .part), check its sha256, rename it into place. False if it was
    already there and whole. `url` is the file's URL, or a Remote base with `path` below it; `timeout`:
    seconds with nothing from the server before the file is given up, retries included."""
    remote = url if isinstance(url, Remote) else Remote(url)
    send, show = remote.file(path) if path is not None else remote.whole()
    if dest.is_file() and dest.stat().st_size == size and sha256(dest) == digest:
        if bar is not None:
            bar.update(size)
        return False
    made = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    part = dest.with_name(dest.name + ".part")
    state = _State(timeout)
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DownloadError(f"{dest.parent}: cannot create the folder ({e.strerror or e})") from None
        _tries(remote, send, show, part, size, bar, state, retries)
        got = sha256(part)
        if got != digest:
            part.unlink()
            raise DownloadError(f"{dest.name} from {show}: sha256 {got[:12]}... does not match the manifest's "
                                f"{digest[:12]}...; the partial file was deleted, rerun to download it again")
        os.replace(part, dest)
    except BaseException as e:
        _clean(part, made, state, interrupted=not isinstance(e, Exception))
        raise
    return True


def _tries(remote: Remote, send: str, show: str, part: Path, size: int, bar, state: _State, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            _transfer(remote, send, part, size, bar, state)
            return
        except _Fatal as e:
            raise DownloadError(f"{show}: {remote.redact(str(e))}{_kept(part, state)}") from None
        except urllib.error.HTTPError as e:
            if e.code == 416:  # the .part does not fit the file on the server: start again
                part.unlink(missing_ok=True)
            elif e.code < 500 and e.code not in (408, 429):
                raise DownloadError(f"{show}: HTTP {e.code}{_hint(e.code, remote)}{_kept(part, state)}") from None
            why = f"HTTP {e.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            why = _reason(e, part, size)
            if why is None:
                raise DownloadError(f"{show}: {remote.redact(_not_http(e))}{_kept(part, state)}") from None
        left = state.left()
        if attempt == retries or left <= 0.1:
            if left <= 0.1 and why == "timed out":
                why = f"no answer within {state.timeout:g} s (--timeout)"
            raise DownloadError(f"{show}: {remote.redact(why)}{_kept(part, state)}") from None
        time.sleep(max(0.0, min(BACKOFF * 2 ** attempt, 10.0, left)))


def _reason(e: Exception, part: Path, size: int) -> str | None:
    """Why a try failed, when another may succeed; None when the server is not speaking HTTP."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, str):
        e = e.reason
    if isinstance(e, ssl.SSLError) and not isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return None  # a refused certificate, or no TLS at all: no retry mends it
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without a reply"
    if isinstance(e, http.client.IncompleteRead):
        have = part.stat().st_size if part.exists() else 0
        return f"the connection was cut after {have} of {size} bytes"
    if isinstance(e, http.client.HTTPException):
        return None
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return f"{type(e).__name__}: {e}"


def _not_http(e: Exception) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, str):
        e = e.reason
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the server's certificate was refused ({e.verify_message or e})"
    if isinstance(e, ssl.SSLError):
        return f"the TLS handshake failed ({e.reason or e}); does the server speak https?"
    detail = " ".join(str(e).split())[:80]  # what the server sent, on one line
    return f"the server did not answer with HTTP ({type(e).__name__}{': ' + detail if detail else ''})"


def _hint(code: int, remote: Remote) -> str:
    if code == 401:
        return (" (the server refused the credentials in --base-url)" if remote.auth else
                " (the server wants credentials: --base-url https://USER:PASSWORD@HOST/...)")
    if code == 404:
        return " (not found: is the base URL a copy of the repository at the manifest's commit?)"
    return ""


def _kept(part: Path, state: _State) -> str:
    have = part.stat().st_size if part.exists() else 0
    if have and (state.resumable or not state.wrote):
        return f"; {have} bytes kept in {part}, rerun the same command to resume"
    return "; nothing was kept"


def _clean(part: Path, made: list[Path], state: _State, interrupted: bool) -> None:
    """After a failure: no empty or unresumable .part, no folder this call made and left empty."""
    try:
        have = part.stat().st_size if part.exists() else 0
        if part.exists() and (have == 0 or (state.wrote and not state.resumable and not interrupted)):
            part.unlink()
    except OSError:
        pass
    for d in made:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


def _transfer(remote: Remote, url: str, part: Path, size: int, bar, state: _State) -> None:
    """Append the missing bytes of `part` (HTTP Range); restart when the server ignores the range."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    if remote.auth:  # to this host only: urllib drops unredirected headers when it follows a redirect
        req.add_unredirected_header("Authorization", remote.auth)
    with urllib.request.urlopen(req, timeout=max(0.05, min(state.timeout, state.left()))) as resp:
        if resp.status not in (200, 206):
            raise _Fatal(f"unexpected HTTP {resp.status} reply")
        state.resumable |= resp.status == 206 or "bytes" in (resp.headers.get("Accept-Ranges") or "").lower()
        mode = "ab" if have and resp.status == 206 else "wb"
        if mode == "wb" and bar is not None and have:
            bar.update(-have)
        written = have if mode == "ab" else 0
        fh = None
        try:
            while True:
                try:
                    block = resp.read(CHUNK)
                except http.client.IncompleteRead as e:  # keep what came before the cut, then retry
                    block, cut = e.partial, e
                else:
                    cut = None
                if block:
                    if written + len(block) > size:
                        if fh is not None:
                            fh.close()
                            fh = None
                        part.unlink(missing_ok=True)
                        raise _Fatal(f"the server sent more than the manifest's {size} bytes; is --base-url a copy "
                                     "of the repository at the manifest's commit?")
                    try:
                        if fh is None:  # opened at the first byte: a reply without a body leaves no file
                            fh = open(part, mode)
                            state.wrote = True
                        fh.write(block)
                    except OSError as e:
                        raise _Fatal(f"cannot write {part}: {e.strerror or e}") from None
                    written += len(block)
                    state.touch()
                    if bar is not None:
                        bar.update(len(block))
                if cut is not None:
                    raise cut
                if not block:
                    break
        finally:
            if fh is not None:
                fh.close()
    if written < size:
        raise ConnectionError(f"connection closed after {written} of {size} bytes")


def resolve(remote: Remote, timeout: float) -> None:
    """Look the host up within `timeout` seconds: a name lookup is outside urllib's socket timeout, and a
    resolver that never answers would otherwise hold the command for minutes. (The lookup's own result is
    cached by the system; urllib repeats it.)"""
    import socket
    import threading

    done: list = []

    def look():
        try:
            socket.getaddrinfo(remote.hostname, remote.port, type=socket.SOCK_STREAM)
            done.append(None)
        except OSError as e:
            done.append(e)

    t = threading.Thread(target=look, daemon=True)
    t.start()
    t.join(timeout)
    if not done:
        raise DownloadError(f"{remote.shown_base}: the host name was not resolved within {timeout:g} s (--timeout); "
                            f"check the network or the name")
    if done[0] is not None:
        raise DownloadError(f"{remote.shown_base}: the host name does not resolve ({remote.redact(str(done[0]))})")


def fetch(out, *, tasks=("gsm8k", "math"), samples: int | None = 5, base_url: str | None = None,
          manifest_path=None, progress: bool = True, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Download the selected files into `out`; returns counts and bytes. `timeout`: seconds with nothing
    from the server before a file is given up, retries included."""
    from tqdm.auto import tqdm

    if not timeout > 0:
        raise DownloadError(f"timeout must be > 0 seconds, got {timeout}")
    manifest_path = manifest_path or MANIFEST
    manifest = load_manifest(manifest_path)
    files = select(manifest, tasks, samples)
    if not files:
        raise DownloadError(f"no file in {manifest_path} matches tasks {list(tasks)} and samples {samples}")
    remote = Remote(base_url or manifest["url"])
    resolve(remote, timeout)
    if remote.cleartext:
        warn(f"{remote.shown_base}: the credentials go unencrypted over http://")
    total = sum(f["size"] for f in files)
    got = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="fetch-published", disable=not progress) as bar:
        for f in files:
            got += fetch_file(remote, destination(Path(out), manifest, f), f["size"], f["sha256"], bar, timeout,
                              path=f["path"])
    return {"files": len(files), "downloaded": got, "kept": len(files) - got, "bytes": total,
            "out": str(out), "commit": manifest["commit"]}
