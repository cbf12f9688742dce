"""Download the authors' published per-example results (Kang et al., ICML 2025) with checksums.

data/kang2025_manifest.json lists, at a pinned commit of github.com/katiekang1998/reasoning_generalization
(MIT), every array `premem.py import-published` reads from its `ckpts/` folder, with size and sha256.
`fetch` downloads the chosen files into OUT (the authors' layout: OUT/<run>/checkpoint-<step>/<file>),
with a progress bar in bytes. A file is written as OUT/...part, resumed with an HTTP Range request after
an interruption, checked against its sha256, and only then renamed into place; a file already there with
the right checksum is skipped, so a rerun finishes what is missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from premem_kit.core.errors import KitError

MANIFEST = Path(__file__).resolve().parents[2] / "data" / "kang2025_manifest.json"
CHUNK = 1 << 16
_SAMPLES = re.compile(r"answer_types(\d+)_")


class DownloadError(KitError):
    """A failed or corrupt download; the message names the file and what to do."""


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


def fetch_file(url: str, dest: Path, size: int, digest: str, bar=None, timeout: float = 60, retries: int = 3) -> bool:
    """Download one file (resuming a .part), check its sha256, rename it into place. False if it was
    already there and whole."""
    if dest.is_file() and dest.stat().st_size == size and sha256(dest) == digest:
        if bar is not None:
            bar.update(size)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, bar, timeout)
            break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 416:
                raise DownloadError(f"{url}: HTTP {e.code}") from None
            if attempt == retries:
                raise DownloadError(f"{url}: {type(e).__name__}: {e}; rerun the same command to resume "
                                    f"({part.stat().st_size if part.exists() else 0} of {size} bytes kept)") from None
            time.sleep(min(2 ** attempt, 10))
    got = sha256(part)
    if got != digest:
        part.unlink()
        raise DownloadError(f"{dest.name} from {url}: sha256 {got[:12]}... does not match the manifest's "
                            f"{digest[:12]}...; the partial file was deleted, rerun to download it again")
    os.replace(part, dest)
    return True


def _transfer(url: str, part: Path, size: int, bar, timeout: float) -> None:
    """Append the missing bytes of `part` (HTTP Range); restart when the server ignores the range."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        mode = "ab" if have and resp.status == 206 else "wb"
        if mode == "wb" and bar is not None and have:
            bar.update(-have)
        with open(part, mode) as fh:
            while block := resp.read(CHUNK):
                fh.write(block)
                if bar is not None:
                    bar.update(len(block))
    if part.stat().st_size < size:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {size} bytes")


def fetch(out, *, tasks=("gsm8k", "math"), samples: int | None = 5, base_url: str | None = None,
          manifest_path=None, progress: bool = True, timeout: float = 60) -> dict:
    """Download the selected files into `out`; returns counts and bytes."""
    from tqdm.auto import tqdm

    manifest_path = manifest_path or MANIFEST
    manifest = load_manifest(manifest_path)
    files = select(manifest, tasks, samples)
    if not files:
        raise DownloadError(f"no file in {manifest_path} matches tasks {list(tasks)} and samples {samples}")
    base = (base_url or manifest["url"]).rstrip("/") + "/"
    total = sum(f["size"] for f in files)
    got = 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="fetch-published", disable=not progress) as bar:
        for f in files:
            got += fetch_file(base + f["path"], destination(Path(out), manifest, f), f["size"], f["sha256"],
                              bar, timeout)
    return {"files": len(files), "downloaded": got, "kept": len(files) - got, "bytes": total,
            "out": str(out), "commit": manifest["commit"]}
