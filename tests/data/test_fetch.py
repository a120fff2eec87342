"""Offline tests for pneumolab.data.fetch against local HTTP servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pneumolab.data import fetch as fetch_mod
from pneumolab.data.fetch import MANUAL_INSTRUCTIONS, download, extract, fetch
from pneumolab.errors import FetchError

Serve = Callable[..., tuple[ThreadingHTTPServer, str]]


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload``; ``server.mode``: range, norange, forbidden, html or text."""

    def do_GET(self) -> None:
        server = self.server
        rng = self.headers.get("Range")
        server.ranges.append(rng)
        status, ctype, body, extra = 200, "application/zip", server.payload, {}
        if server.mode == "forbidden":
            status, ctype, body = 403, "text/html", b"<html><body>Access denied</body></html>"
        elif server.mode == "html":
            ctype, body = "text/html; charset=utf-8", b"<!DOCTYPE html><html>Are you human?</html>"
        elif server.mode == "text":
            ctype, body = "application/octet-stream", b"not a zip at all"
        elif server.mode == "range" and rng:
            start = int(rng.removeprefix("bytes=").removesuffix("-"))
            size = len(server.payload)
            status, body = 206, server.payload[start:]
            extra = {"Content-Range": f"bytes {start}-{size - 1}/{size}"}
        self.send_response(status)
        for key, value in {
            "Content-Type": ctype,
            "Content-Length": str(len(body)),
            **extra,
        }.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


def _make_zip(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    entries = {
        "chest_xray/train/NORMAL/a.jpeg": b"\xff\xd8normal" * 500,
        "chest_xray/train/PNEUMONIA/b.jpeg": bytes(range(256)) * 40,
        "__MACOSX/junk": b"mac",
        "chest_xray/._a.jpeg": b"mac",
        **(extra or {}),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _make_zip(tmp_path / "src.zip")


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[ThreadingHTTPServer] = []

    def start(payload: bytes, mode: str = "range") -> tuple[ThreadingHTTPServer, str]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.payload, server.mode, server.ranges = payload, mode, []
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_port}/ChestXRay2017.zip"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_fetch_downloads_verifies_and_extracts(tmp_path: Path, archive: Path, serve: Serve) -> None:
    payload = archive.read_bytes()
    server, url = serve(payload)
    out = tmp_path / "data"
    root = fetch(out, url=url, sha256=hashlib.sha256(payload).hexdigest(), progress=False)
    assert root == out / "chest_xray"
    assert (root / "train" / "NORMAL" / "a.jpeg").is_file()
    assert (root / "train" / "PNEUMONIA" / "b.jpeg").is_file()
    assert (out / "ChestXRay2017.zip").read_bytes() == payload
    assert not (out / "__MACOSX").exists() and not (root / "._a.jpeg").exists()
    assert server.ranges == [None]


def test_resume_sends_range_and_appends(tmp_path: Path, archive: Path, serve: Serve) -> None:
    payload = archive.read_bytes()
    server, url = serve(payload)
    dest = tmp_path / "a.zip"
    Path(f"{dest}.part").write_bytes(payload[:1000])
    assert download(url, dest, expected_size=len(payload), progress=False) == dest
    assert server.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == payload
    assert not Path(f"{dest}.part").exists()


def test_server_ignoring_range_restarts(tmp_path: Path, archive: Path, serve: Serve) -> None:
    payload = archive.read_bytes()
    server, url = serve(payload, mode="norange")
    dest = tmp_path / "a.zip"
    Path(f"{dest}.part").write_bytes(b"stale bytes that must be discarded")
    download(url, dest, progress=False)
    assert server.ranges == ["bytes=34-"]
    assert dest.read_bytes() == payload


def test_sha256_mismatch_deletes_file(tmp_path: Path, archive: Path, serve: Serve) -> None:
    payload = archive.read_bytes()
    _, url = serve(payload)
    dest = tmp_path / "a.zip"
    with pytest.raises(FetchError, match="sha256 mismatch") as info:
        download(url, dest, sha256="0" * 64, progress=False)
    assert "0" * 64 in str(info.value) and hashlib.sha256(payload).hexdigest() in str(info.value)
    assert not dest.exists() and not Path(f"{dest}.part").exists()


def test_size_mismatch_raises(tmp_path: Path, archive: Path, serve: Serve) -> None:
    _, url = serve(archive.read_bytes())
    with pytest.raises(FetchError, match="should have"):
        download(url, tmp_path / "a.zip", expected_size=1, progress=False)
    assert not (tmp_path / "a.zip").exists()


@pytest.mark.parametrize("mode", ["forbidden", "html", "text"])
def test_blocked_download_gives_manual_instructions(
    tmp_path: Path, archive: Path, serve: Serve, mode: str
) -> None:
    _, url = serve(archive.read_bytes(), mode=mode)
    with pytest.raises(FetchError) as info:
        fetch(tmp_path / "data", url=url, progress=False)
    assert url in str(info.value) and MANUAL_INSTRUCTIONS in str(info.value)
    assert not (tmp_path / "data" / "ChestXRay2017.zip").exists()


def test_connection_refused_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound but not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.zip"
        started = time.monotonic()
        with pytest.raises(FetchError) as info:
            download(url, tmp_path / "a.zip", timeout=5, progress=False)
    assert time.monotonic() - started < 2
    assert MANUAL_INSTRUCTIONS in str(info.value)


@pytest.mark.parametrize("url", ["notaurl", "ftp://example.org/x.zip", "C:/data/x.zip"])
def test_an_address_that_is_not_a_url_is_named(tmp_path: Path, url: str) -> None:
    with pytest.raises(FetchError, match=r"not a download address.*--from FILE\.zip"):
        download(url, tmp_path / "a.zip", progress=False)
    assert not list(tmp_path.iterdir())


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as sock:  # listening but never answering
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.zip"
        started = time.monotonic()
        with pytest.raises(FetchError) as info:
            download(url, tmp_path / "a.zip", timeout=0.3, progress=False)
    assert time.monotonic() - started < 2
    assert MANUAL_INSTRUCTIONS in str(info.value)


def test_fetch_from_zip_needs_no_network(
    tmp_path: Path, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used")

    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", no_network)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = fetch(tmp_path / "data", from_zip=archive, sha256=sha, progress=False)
    assert (root / "train" / "NORMAL" / "a.jpeg").is_file()
    assert archive.exists()


def test_a_digest_written_with_its_prefix_or_spaces_is_the_digest(tmp_path: Path, archive: Path):
    """`sha256:<hex>` (as registries write it) failed the check after the whole download, which
    was then deleted."""
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = fetch(
        tmp_path / "data", from_zip=archive, sha256=f" sha256:{sha.upper()} ", progress=False
    )
    assert (root / "train").is_dir()


@pytest.mark.parametrize("digest", ["abc", "g" * 64, "0" * 63])
def test_a_digest_that_cannot_be_one_is_refused_before_downloading(tmp_path: Path, digest: str):
    with pytest.raises(FetchError, match=r"not a SHA-256 digest \(64 hexadecimal digits\)"):
        fetch(tmp_path / "data", url="http://127.0.0.1:9/never.zip", sha256=digest)
    assert not (tmp_path / "data").exists()


def test_url_with_from_is_refused_as_ignored(tmp_path: Path, capsys):
    from pneumolab.cli import main

    command = [
        "data",
        "fetch",
        "--out",
        str(tmp_path / "d"),
        "--from",
        "a.zip",
        "--url",
        "http://x",
    ]
    assert main(command) == 2
    assert "--url with --from (the local zip is unpacked" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../evil.txt", "chest_xray/../../evil.txt", "ABSOLUTE"])
def test_zip_slip_rejected(tmp_path: Path, name: str) -> None:
    outside = tmp_path / "outside" / "evil.txt"
    name = str(outside) if name == "ABSOLUTE" else name
    bad = _make_zip(tmp_path / "bad.zip", {name: b"pwned"})
    out = tmp_path / "data" / "deep"
    with pytest.raises(FetchError, match="unsafe entry") as info:
        extract(bad, out)
    assert name in str(info.value)
    assert not any(out.rglob("*")), "nothing may be extracted from an archive with a bad entry"
    assert not outside.exists() and not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_entry_rejected(tmp_path: Path) -> None:
    bad = _make_zip(tmp_path / "bad.zip")
    link = zipfile.ZipInfo("chest_xray/train/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(FetchError, match="symlink"):
        extract(bad, tmp_path / "data")
    assert not (tmp_path / "data" / "chest_xray").exists()


def test_non_zip_file_raises(tmp_path: Path) -> None:
    junk = tmp_path / "ChestXRay2017.zip"
    junk.write_bytes(b"<html>not a zip</html>")
    with pytest.raises(FetchError, match="damaged or not a plain zip") as info:
        fetch(tmp_path / "data", from_zip=junk, progress=False)
    assert str(junk) in str(info.value)
    assert junk.exists()  # the user's own file is never deleted


def _damaged(archive: Path) -> bytes:
    """``archive`` with a byte of its first member's data changed: its CRC no longer holds."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        first = zf.infolist()[0]
    offset = first.header_offset + 30 + len(first.filename.encode())  # past the local header
    data[offset] ^= 0xFF
    return bytes(data)


def test_a_damaged_download_is_deleted_so_that_the_next_fetch_gets_it_again(
    tmp_path: Path, archive: Path, serve: Serve
) -> None:
    out = tmp_path / "data"
    _, bad_url = serve(_damaged(archive))
    with pytest.raises(FetchError, match=r"is damaged.*deleted, so that the next"):
        fetch(out, url=bad_url, progress=False)
    assert not (out / "ChestXRay2017.zip").exists()
    _, good_url = serve(archive.read_bytes())
    assert (fetch(out, url=good_url, progress=False) / "train" / "NORMAL" / "a.jpeg").is_file()


def test_a_train_folder_is_found_whatever_its_case(tmp_path: Path) -> None:
    upper = tmp_path / "upper.zip"
    with zipfile.ZipFile(upper, "w") as zf:
        zf.writestr("chest_xray/Train/NORMAL/a.jpeg", b"x")
    assert extract(upper, tmp_path / "data") == tmp_path / "data" / "chest_xray"


def test_archive_without_train_folder_raises(tmp_path: Path) -> None:
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("stuff/readme.txt", b"hello")
    with pytest.raises(FetchError, match="no train/ folder"):
        extract(other, tmp_path / "data")


def test_a_zip_bomb_and_duplicate_entries_are_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """A 300 KB archive inflated to 300 MB, and of two entries of one name the last silently
    replaced the first (a damaged image over a good one)."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("chest_xray/train/NORMAL/a.jpeg", b"x")
        zf.writestr("chest_xray/train/NORMAL/zeros.jpeg", bytes(20 << 20))  # ~20 kB deflated
    with pytest.raises(FetchError, match=r"'chest_xray/train/NORMAL/zeros\.jpeg' would inflate"):
        extract(bomb, tmp_path / "out1")
    assert not any((tmp_path / "out1").rglob("*.jpeg"))
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("chest_xray/train/NORMAL/a.jpeg", b"good")
        zf.writestr("chest_xray/train/NORMAL/A.JPEG", b"other")
        zf.writestr("chest_xray/train/NORMAL/a.jpeg", b"bad")
    with pytest.raises(
        FetchError, match=r"entries 'chest_xray/train/NORMAL/a\.jpeg' and '.*A\.JPEG' name one file"
    ):
        extract(twice, tmp_path / "out2")
    assert not any((tmp_path / "out2").rglob("*.jpeg"))


def test_a_damaged_archive_leaves_no_partial_dataset(tmp_path: Path, archive: Path) -> None:
    """The members before a damaged one stayed, and `data check` took the folder for a
    dataset; files that were there before are kept."""
    out = tmp_path / "data"
    (out / "chest_xray").mkdir(parents=True)
    (out / "chest_xray" / "notes.txt").write_text("mine")
    damaged = tmp_path / "damaged.zip"
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:  # the second of its two images
        last = zf.getinfo("chest_xray/train/PNEUMONIA/b.jpeg")
    data[last.header_offset + 30 + len(last.filename.encode())] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(FetchError, match=r"damaged.*; the 2 file\(s\) it had extracted were"):
        extract(damaged, out)
    assert [p for p in out.rglob("*") if p.is_file()] == [out / "chest_xray" / "notes.txt"]


def test_a_link_in_out_is_named_not_blamed_on_the_archive(tmp_path: Path, archive: Path) -> None:
    """A symlinked folder in --out made a clean archive's first entry 'unsafe'."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "data"
    out.mkdir()
    (out / "chest_xray").symlink_to(elsewhere)
    with pytest.raises(FetchError, match=r"data/chest_xray: a link out of .*give --out a folder"):
        extract(archive, out)
    assert not any(elsewhere.iterdir())
