"""fetch-published against local servers (127.0.0.1 only): checksums, an interrupted transfer resumed with a
Range request, a corrupt file refused, a rerun that downloads nothing; and the network as a careless or hostile
server meets it: one that never answers (the --timeout deadline), one that is not HTTP, a cut chunked body, a
body longer than the manifest's, basic auth and a query token that never appear in a message, a redirect that
does not carry the credentials. Each failure: exit 2, a message naming the redacted URL, nothing left behind."""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from premem_kit.analysis import download

FILES = {  # path in the manifest -> content
    "ckpts/gsm8k_orig_1epochs_full_lr5e-05_bs128/subsample_idxs.npy": bytes(range(256)) * 40,
    "ckpts/gsm8k_orig_1epochs_full_lr5e-05_bs128/checkpoint-58/train_answer_types5_seed2.npy": b"a" * 5000,
    "ckpts/gsm8k_orig_1epochs_full_lr5e-05_bs128/checkpoint-58/train_answer_types50_seed2.npy": b"b" * 7000,
    "ckpts/math_orig_1epochs_full_lr5e-05_bs24/checkpoint-9/train_perplexities.npy": b"c" * 3000,
}


class Server:
    def __init__(self, files, cut_first: dict | None = None, corrupt=(), auth: str | None = None,
                 query: str | None = None, redirect: str | None = None):
        self.files, self.cut = dict(files), dict(cut_first or {})
        self.corrupt, self.requests, self.headers = set(corrupt), [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path, _, q = self.path.lstrip("/").partition("?")
                outer.headers.append(dict(self.headers))
                if redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect + path)
                    self.end_headers()
                    return
                if auth is not None and self.headers.get("Authorization") != auth:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
                    self.end_headers()
                    return
                data = outer.files.get(path) if query is None or q == query else None
                outer.requests.append((path, self.headers.get("Range")))
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                if path in outer.corrupt:
                    data = data[:-1] + b"!"
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in outer.cut:  # the first transfer dies part way
                    self.wfile.write(body[: outer.cut.pop(path)])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def manifest(tmp_path):
    m = {"commit": "x" * 40, "folder": "ckpts", "url": "http://unused/",
         "files": [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in FILES.items()]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(m))
    return path


def test_interrupted_transfer_resumes_and_a_rerun_downloads_nothing(tmp_path, manifest):
    big = "ckpts/gsm8k_orig_1epochs_full_lr5e-05_bs128/subsample_idxs.npy"
    srv = Server(FILES, cut_first={big: 4000})
    try:
        out = tmp_path / "ckpts"
        kw = dict(base_url=srv.url, manifest_path=manifest, progress=False, tasks=("gsm8k",))
        # a 5-sample selection by default: the 50-sample file and the MATH file are not fetched
        res = download.fetch(out, **kw)
        assert res == {"files": 2, "downloaded": 2, "kept": 0, "bytes": 10240 + 5000, "out": str(out),
                       "commit": "x" * 40}
        dest = out / "gsm8k_orig_1epochs_full_lr5e-05_bs128" / "subsample_idxs.npy"
        assert dest.read_bytes() == FILES[big] and not list(out.rglob("*.part"))
        ranges = [r for p, r in srv.requests if p == big]
        assert ranges == [None, "bytes=4000-"]  # the second request asked only for what was missing
        srv.requests.clear()
        assert download.fetch(out, **kw)["downloaded"] == 0 and srv.requests == []
    finally:
        srv.close()


def test_a_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, manifest):
    bad = "ckpts/gsm8k_orig_1epochs_full_lr5e-05_bs128/checkpoint-58/train_answer_types5_seed2.npy"
    srv = Server(FILES, corrupt={bad})
    try:
        with pytest.raises(download.DownloadError, match="does not match the manifest"):
            download.fetch(tmp_path / "o", base_url=srv.url, manifest_path=manifest, progress=False)
        dest = tmp_path / "o" / "gsm8k_orig_1epochs_full_lr5e-05_bs128" / "checkpoint-58" / "train_answer_types5_seed2.npy"
        assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    finally:
        srv.close()


def test_the_committed_manifest_pins_the_published_arrays():
    m = download.load_manifest()
    assert m["license"] == "MIT" and len(m["commit"]) == 40 and m["url"].endswith(m["commit"] + "/")
    runs = {f["path"].split("/")[1] for f in m["files"]}
    assert sum(r.startswith("gsm8k_") for r in runs) == 13 and sum(r.startswith("math_") for r in runs) == 11
    five = download.select(m, samples=5)
    assert 0 < sum(f["size"] for f in five) < sum(f["size"] for f in m["files"])
    # every checkpoint keeps a train and a test answer file: 5 samples where published, else the most
    test_files = [f["path"] for f in five if "/test_answer_types" in f["path"]]
    ckpts = {f["path"].rsplit("/", 1)[0] for f in m["files"] if "/checkpoint-" in f["path"]}
    assert {p.rsplit("/", 1)[0] for p in test_files} == ckpts
    assert any("answer_types50_" in p for p in test_files) and any("answer_types5_" in p for p in test_files)


def test_fetch_published_command_then_import(tmp_path, manifest, capsys, monkeypatch):
    import premem

    srv = Server(FILES)
    try:
        monkeypatch.setattr(download, "MANIFEST", manifest)
        out = tmp_path / "ckpts"
        argv = ["fetch-published", str(out), "--tasks", "gsm8k", "--base-url", srv.url]
        assert premem.main(argv) == 0
        text = capsys.readouterr().out
        assert "2 files" in text and "downloaded 2, kept 0" in text and "import-published" in text
        assert premem.main(argv) == 0 and "downloaded 0, kept 2" in capsys.readouterr().out
        assert premem.main(["fetch-published", str(tmp_path / "x"), "--base-url", srv.url + "nothing/"]) == 2
        assert "HTTP 404" in capsys.readouterr().err and not list((tmp_path / "x").rglob("*.npy"))
    finally:
        srv.close()


# ----------------------------------------------------------------------------- the network, hostile or careless

SECRET = "s3cretPW42"
FIRST = "ckpts/gsm8k_orig_1epochs_full_lr5e-05_bs128/checkpoint-58/train_answer_types5_seed2.npy"  # fetched first


class RawServer:
    """A socket on 127.0.0.1 that reads each request and answers with `reply` bytes, or never answers (None)."""

    def __init__(self, reply: bytes | None, wait: bool = True):
        self.reply, self.wait, self.conns = reply, wait, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._answer, args=(c,), daemon=True).start()

    def _answer(self, c):
        try:
            data = b""
            while self.wait and b"\r\n\r\n" not in data and (block := c.recv(4096)):
                data += block
            if self.reply is not None:
                c.sendall(self.reply)
                c.close()
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CUT_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n100\r\nabc"
NET_CASES = [  # (id, server, how --base-url is written from the server's url, extra args, phrase)
    ("never answers", lambda: RawServer(None), "{url}", ["--timeout", "1"], "no answer within 1 s (--timeout)"),
    ("not HTTP", lambda: RawServer(b"SSH-2.0-OpenSSH_9.6\r\n"), "{url}", [],
     "the server did not answer with HTTP (BadStatusLine: SSH-2.0-OpenSSH_9.6)"),
    ("empty reply", lambda: RawServer(b""), "{url}", [], "closed the connection without a reply"),
    ("cut chunked body", lambda: RawServer(CUT_CHUNKED), "{url}", [], "the connection was cut after 16 of 5000 bytes"),
    ("longer than the manifest", lambda: Server({**FILES, FIRST: FILES[FIRST] + b"x"}), "{url}", [],
     "the server sent more than the manifest's 5000 bytes"),
    ("password, not HTTP", lambda: RawServer(b"garbage\r\n\r\n"), "http://bob:" + SECRET + "@{hostport}/", [],
     "http://***@127.0.0.1:"),
    ("password, never answers", lambda: RawServer(None), "http://bob:" + SECRET + "@{hostport}/",
     ["--timeout", "0.5"], "no answer within 0.5 s"),
    ("password refused", lambda: Server(FILES, auth=basic("bob", "right")), "http://bob:" + SECRET + "@{hostport}/",
     [], "HTTP 401 (the server refused the credentials in --base-url)"),
    ("credentials wanted", lambda: Server(FILES, auth=basic("bob", "right")), "{url}", [],
     "HTTP 401 (the server wants credentials"),
    ("token in the query, not found", lambda: Server(FILES, query="token=right"), "{url}?token=" + SECRET, [],
     "/ckpts/gsm8k_orig_1epochs_full_lr5e-05_bs128/checkpoint-58/train_answer_types5_seed2.npy?token=*** : HTTP 404"
     .replace(" :", ":")),
    ("token alone as the query", lambda: RawServer(None), "{url}?" + SECRET, ["--timeout", "0.5"], ".npy?***: no answer"),
    ("token as the user name", lambda: RawServer(b"garbage\r\n\r\n"), "http://" + SECRET + "@{hostport}/", [],
     "http://***@127.0.0.1:"),
    ("https to a server that is not TLS", lambda: RawServer(b"garbage\r\n\r\n", wait=False),
     "https://bob:" + SECRET + "@{hostport}/", [], "the TLS handshake failed (WRONG_VERSION_NUMBER)"),
]


@pytest.fixture
def fast_retries(monkeypatch, manifest):
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    monkeypatch.setattr(download, "MANIFEST", manifest)


@pytest.mark.parametrize("case", NET_CASES, ids=[c[0] for c in NET_CASES])
def test_a_hostile_server_is_a_clean_error_that_shows_no_secret_and_leaves_nothing(tmp_path, capsys, fast_retries,
                                                                                   case):
    import premem

    _, make, base, args, phrase = case
    srv = make()
    try:
        url = base.format(url=srv.url, hostport=srv.url.split("//")[1].rstrip("/"))
        out = tmp_path / "out"
        t = time.monotonic()
        code = premem.main(["fetch-published", str(out), "--tasks", "gsm8k", "--base-url", url, *args])
        took = time.monotonic() - t
        cap = capsys.readouterr()
        assert code == 2 and phrase in cap.err, cap.err
        assert f"127.0.0.1:{srv.url.split(':')[2].rstrip('/')}/ckpts/" in cap.err  # the file's URL is named
        assert SECRET not in cap.err + cap.out and "Traceback" not in cap.err
        assert not out.exists(), sorted(out.rglob("*"))  # no .part, no empty folder
        assert took < 5, took
    finally:
        srv.close()


def test_no_answer_keeps_a_part_from_an_earlier_run_for_resuming(tmp_path, capsys, fast_retries):
    import premem

    srv = RawServer(None)
    try:
        part = tmp_path / "out" / "gsm8k_orig_1epochs_full_lr5e-05_bs128" / "checkpoint-58" / "train_answer_types5_seed2.npy.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(FILES[FIRST][:1000])
        code = premem.main(["fetch-published", str(tmp_path / "out"), "--tasks", "gsm8k", "--base-url", srv.url,
                            "--timeout", "0.5"])
        err = capsys.readouterr().err
        assert code == 2 and f"1000 bytes kept in {part}, rerun the same command to resume" in err, err
        assert part.read_bytes() == FILES[FIRST][:1000]
    finally:
        srv.close()


def test_basic_auth_and_a_query_token_reach_the_mirror_and_no_message(tmp_path, capsys, fast_retries):
    import premem

    srv = Server(FILES, auth=basic("bob", SECRET + "@:/"), query="token=" + SECRET)
    try:
        hostport = srv.url.split("//")[1].rstrip("/")
        url = f"http://bob:{SECRET}%40%3A%2F@{hostport}/?token={SECRET}"  # a percent-encoded password
        assert premem.main(["fetch-published", str(tmp_path / "out"), "--tasks", "gsm8k", "--base-url", url]) == 0
        cap = capsys.readouterr()
        assert "downloaded 2, kept 0" in cap.out and SECRET not in cap.out + cap.err
        assert len(srv.requests) == 2 and all(p.startswith("ckpts/") for p, _ in srv.requests)
    finally:
        srv.close()


def test_a_redirect_does_not_carry_the_credentials(tmp_path, capsys, fast_retries):
    import premem

    other = Server(FILES)
    first = Server(FILES, redirect=other.url)
    try:
        url = first.url.replace("http://", f"http://bob:{SECRET}@")
        assert premem.main(["fetch-published", str(tmp_path / "out"), "--tasks", "gsm8k", "--base-url", url]) == 0
        assert all(h.get("Authorization") == basic("bob", SECRET) for h in first.headers)
        assert other.headers and not any("Authorization" in h for h in other.headers)
        assert SECRET not in str(capsys.readouterr())
    finally:
        first.close()
        other.close()


def test_the_deadline_counts_from_the_last_byte_not_from_the_start(tmp_path, monkeypatch, manifest):
    """A slow but steady server is not cut off: a file that takes longer than the timeout in all finishes."""
    import http.server

    slow = FILES[FIRST]

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(slow)))
            self.end_headers()
            for i in range(0, len(slow), 1000):
                self.wfile.write(slow[i:i + 1000])
                self.wfile.flush()
                time.sleep(0.2)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "x.npy"
        url = f"http://127.0.0.1:{httpd.server_address[1]}/f"
        digest = hashlib.sha256(slow).hexdigest()
        t = time.monotonic()
        assert download.fetch_file(url, dest, len(slow), digest, timeout=0.6, retries=0)
        assert time.monotonic() - t > 0.6 and dest.read_bytes() == slow
    finally:
        httpd.shutdown()


@pytest.mark.parametrize("url,shown", [
    ("https://bob:pw@h.example/a/", "https://***@h.example/a/"),
    ("https://tok@h.example:8443/a?x=1&token=t", "https://***@h.example:8443/a?x=***&token=***"),
    ("http://127.0.0.1:9/?justatoken", "http://127.0.0.1:9/?***"),
    ("https://h.example/mirror", "https://h.example/mirror"),
])
def test_urls_are_shown_redacted(url, shown):
    r = download.Remote(url)
    assert r.shown_base == shown
    sent, _ = r.file("ckpts/a.npy")
    assert "@" not in sent.split("//")[1].split("/")[0]  # credentials go in a header, never in the URL
    assert sent.split("?")[0].endswith("/ckpts/a.npy")


def test_library_refuses_samples_below_one_and_a_zero_timeout(tmp_path, manifest):
    with pytest.raises(download.DownloadError, match="samples must be >= 1"):
        download.fetch(tmp_path / "o", samples=0, manifest_path=manifest, progress=False)
    with pytest.raises(download.DownloadError, match="timeout must be > 0"):
        download.fetch(tmp_path / "o", timeout=0, manifest_path=manifest, progress=False)
    assert not (tmp_path / "o").exists()


def test_the_parser_default_timeout_is_the_library_default():
    import premem

    a = premem.build_parser().parse_args(["fetch-published", "out"])
    assert a.timeout == download.DEFAULT_TIMEOUT and a.samples == 5


def test_a_name_that_does_not_resolve_fails_fast_and_a_hanging_lookup_is_bounded(tmp_path, manifest, monkeypatch):
    """A name lookup is outside urllib's socket timeout. A name that cannot resolve (.invalid, a real
    lookup) fails at once; a resolver that never answers (simulated: no such server can be reached from
    here) fails at --timeout, not minutes later. Nothing is written either way."""
    import socket
    import time

    out = tmp_path / "ckpts"
    kw = dict(manifest_path=manifest, progress=False, tasks=("gsm8k",))
    with pytest.raises(download.DownloadError, match="the host name does not resolve"):
        download.fetch(out, base_url=f"http://bob:{SECRET}@nosuch.invalid/", **kw)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(30))
    t = time.monotonic()
    with pytest.raises(download.DownloadError, match=r"not resolved within 0.5 s \(--timeout\)") as e:
        download.fetch(out, base_url=f"http://bob:{SECRET}@slow.example/", timeout=0.5, **kw)
    assert time.monotonic() - t < 5 and SECRET not in str(e.value) and not out.exists()
