"""fetch-published against a local HTTP server: checksums, an interrupted transfer resumed with a Range
request, a corrupt file refused, a rerun that downloads nothing."""
from __future__ import annotations

import hashlib
import json
import threading
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
    def __init__(self, files, cut_first: dict | None = None, corrupt=()):
        self.files, self.cut = dict(files), dict(cut_first or {})
        self.corrupt, self.requests = set(corrupt), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.lstrip("/")
                data = outer.files.get(path)
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
