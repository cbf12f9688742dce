"""The rephrase collector's chat models and its response cache.

OpenAIChat  POST {OPENAI_BASE_URL}/chat/completions (default https://api.openai.com/v1; key OPENAI_API_KEY;
            model from --rephrase-model or CURATE_REPHRASE_MODEL). HTTP 429/5xx and network errors are
            retried with exponential backoff (Retry-After honoured up to MAX_RETRY_AFTER seconds), within
            an overall deadline per request; requests are spaced to `rpm` per minute. The API key goes
            only in the Authorization header to the configured host: redirects are refused (never
            followed with the key), and error messages never contain it.
HFChat      a local HF model (chat template when its tokenizer has one).
ResponseCache  every response on disk (append-only JSONL keyed by a request hash), so a rerun makes no
            request.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from premem_kit.curation.vocabulary import CurationError
from premem_kit.core.files import JsonlError, append_jsonl_durable, read_jsonl_repaired

log = logging.getLogger("curation")


class ResponseCache:
    """Append-only JSONL of responses keyed by request hash; a torn last line is dropped on open."""

    def __init__(self, path):
        self.path = Path(path)
        self.data = {}
        if self.path.exists():
            try:
                rows = read_jsonl_repaired(self.path)
            except JsonlError as e:
                raise CurationError(f"{e}: a corrupt rephrase cache; delete that line (its request is "
                                    f"made again)") from None
            self.data = {r["key"]: r["response"] for r in rows if "key" in r and "response" in r}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, request: dict, response: str) -> None:
        append_jsonl_durable(self.path, [{"key": key, "request": request, "response": response}])
        self.data[key] = response


MAX_RETRY_AFTER = 60.0  # seconds: a server asking for longer is not waited for


def _retry_delay(error: urllib.error.HTTPError, backoff: float, attempt: int) -> float:
    """Retry-After when the server gives seconds (capped), else exponential backoff."""
    ra = error.headers.get("Retry-After") if error.headers else None
    delay = float(ra) if ra and ra.replace(".", "", 1).isdigit() else backoff * 2 ** attempt
    return min(delay, MAX_RETRY_AFTER)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: following one would send the Authorization header to another URL (and
    turn the POST into a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class OpenAIChat:
    """POST {base_url}/chat/completions with retries (exponential backoff) and a request-rate limit."""

    def __init__(self, base_url=None, model=None, api_key=None, rpm: float = 60, max_retries: int = 5,
                 backoff: float = 1.0, timeout: float = 120, temperature: float = 0.7, max_tokens: int = 1024,
                 deadline: float = 900):
        if max_retries < 0 or timeout <= 0 or deadline <= 0 or backoff < 0:
            raise CurationError(f"rephrase client: max_retries must be >= 0 (got {max_retries}), timeout and "
                                f"deadline > 0, backoff >= 0")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.model = model or os.environ.get("CURATE_REPHRASE_MODEL")
        if not self.model:
            raise CurationError("rephrase collector: no model; pass --rephrase-model or set CURATE_REPHRASE_MODEL")
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.deadline = deadline
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.min_interval = 60.0 / rpm if rpm and rpm > 0 else 0.0
        self.max_retries, self.backoff, self.timeout = max_retries, backoff, timeout
        self.temperature, self.max_tokens = temperature, max_tokens
        self._last = 0.0
        self.requests = 0
        self.ident = f"openai:{self.base_url}:{self.model}"

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    def __repr__(self) -> str:
        return f"OpenAIChat(url={self.url!r}, model={self.model!r}, api_key={'***' if self._api_key else None})"

    def redact(self, text: str) -> str:
        """text without the API key (a server may echo request headers into its error body)."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _wait_turn(self) -> None:
        wait = self._last + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()
        self.requests += 1

    def _post(self, body: bytes, headers: dict) -> str:
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._opener.open(req, timeout=self.timeout) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise CurationError(f"{self.url}: unexpected response {self.redact(json.dumps(payload)[:200])}") from None

    def __call__(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        end = time.monotonic() + self.deadline
        for attempt in range(self.max_retries + 1):
            self._wait_turn()
            try:
                return self._post(body, headers)
            except urllib.error.HTTPError as e:
                if 300 <= e.code < 400:
                    raise CurationError(f"{self.url}: HTTP {e.code}: the server redirects; the kit does not follow "
                                        f"redirects with the API key. Set OPENAI_BASE_URL to the final URL") from None
                if not (e.code == 429 or e.code >= 500) or attempt == self.max_retries:
                    detail = self.redact(e.read().decode("utf-8", "replace")[:200])
                    raise CurationError(f"{self.url}: HTTP {e.code}: {detail}") from None
                delay = _retry_delay(e, self.backoff, attempt)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.max_retries:
                    raise CurationError(f"{self.url}: {self.redact(str(e))}") from None
                delay = self.backoff * 2 ** attempt
            if time.monotonic() + delay > end:
                raise CurationError(f"{self.url}: no answer within the {self.deadline:.0f} s deadline "
                                    f"({attempt + 1} attempt(s))")
            log.warning("rephrase request failed (attempt %d), retrying in %.1f s", attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")


class HFChat:
    """A local HF model as the rephraser (chat template when the tokenizer has one)."""

    def __init__(self, model_spec: str, temperature: float = 0.7, max_new_tokens: int = 512, seed: int = 0):
        from premem_kit.core import config as config_mod
        from premem_kit.models import loading as models

        cfg = config_mod.ModelSettings(model=model_spec, quantization="none")
        self.tok = models.load_tokenizer(model_spec)
        self.model = models.load_base_model(cfg).eval()
        self.temperature, self.max_new_tokens, self.seed = temperature, max_new_tokens, seed
        self.requests = 0
        self.ident = f"hf:{model_spec}"

    def __call__(self, messages):
        from premem_kit.models import inference

        if getattr(self.tok, "chat_template", None):
            prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(m["content"] for m in messages) + "\n\n"
        self.requests += 1
        out, _ = inference.sample(self.model, self.tok, [prompt], n=1, temperature=self.temperature, top_p=0.95,
                                  max_new_tokens=self.max_new_tokens, batch_size=1, seed=self.seed + self.requests,
                                  stop=None, progress=False)
        return out[0][0]
