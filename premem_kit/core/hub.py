"""Is the Hugging Face Hub reachable? Asked once, before a Hub id is loaded, so that an offline machine
gets the kit's advice at once instead of minutes of "Retrying in 8s" from the download client.

A Hub id still loads from the local cache when the Hub cannot be reached (models: local_files_only;
datasets: the datasets library's offline mode for that one call).
"""
from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlparse

TRUE = {"1", "true", "yes", "on"}
CONNECT_TIMEOUT = 3.0  # seconds


def offline_reason() -> str | None:
    """Why the Hub cannot be reached now (None when it can): offline mode set, or no TCP connection to
    the Hub's host (HF_ENDPOINT or huggingface.co) within CONNECT_TIMEOUT seconds."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in TRUE:
            return f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        return f"no connection to {host}:{port} ({type(e).__name__})"
    return None


def load_failure(what: str, error: Exception, offline: str | None, instead: str) -> str:
    """The message for a Hub id that did not load: why (offline, or the library's first line) and what
    to use instead."""
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    why = f"the Hub cannot be reached ({offline}) and no cached copy was found" if offline else \
        f"{type(error).__name__}: {first}"
    return f"could not load {what} from the Hugging Face Hub: {why}.\n{instead}"


@contextlib.contextmanager
def datasets_offline():
    """The datasets library in offline mode for one call (cache only, no retries)."""
    import datasets.config as dc

    old = dc.HF_HUB_OFFLINE
    dc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE = old
