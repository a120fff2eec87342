"""Bounded hostile load on `pneumolab serve` (loopback only): decompression-bomb PNGs from
concurrent clients, oversize uploads, header bombs, slow clients; answers and peak memory.

    python benchmarks/serve_hostile.py RUN_DIR [--clients 8] [--rounds 3] [--slow 300]
        [--backend torch] [-- SERVE_FLAGS...]

Starts one `pneumolab serve` process on 127.0.0.1 (a free port; SERVE_FLAGS are passed on,
e.g. `--max-decodes 4`), then, one phase after the other:

1. bombs: `--clients` threads each upload a 16-bit 7000 x 7000 PNG (~0.1 MB compressed,
   ~100 MB of pixels) `--rounds` times;
2. oversize: the same clients upload 25 MB each (over the default 20 MB limit), and a PNG whose
   header announces 30000 x 30000 pixels;
3. slow clients: `--slow` connections send half a request head and stall; counts how many the
   server still holds after its header timeout (+2 s), and what a normal request gets meanwhile;
4. normal: `--clients` threads upload a small PNG for 5 s.

Every request is counted by status (200/408/413/422/503 expected; anything else, or a
connection error, is an error). Peak memory is the server's VmHWM (Linux /proc), before and
after. Bounded: a few hundred requests and about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, start_server

EXPECTED = {200, 408, 413, 422, 503}


def bomb_png() -> bytes:
    """16-bit 7000 x 7000 grayscale, almost all zeros: ~0.1 MB on the wire, ~100 MB decoded."""
    pixels = np.zeros((7000, 7000), dtype=np.uint16)
    pixels[::7, ::3] = 4000
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def header_bomb_png() -> bytes:
    """A PNG whose header announces 30000 x 30000 16-bit pixels (refused before decoding)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    # tests/corpus.py, on sys.path only from the line above: mypy (run on benchmarks/) can't see it
    from corpus import png_header_only  # type: ignore[import-not-found]

    return png_header_only(30_000, 30_000)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload_many(url: str, payload: bytes, clients: int, rounds: int) -> Counter:
    """Statuses of ``clients`` threads each posting ``payload`` ``rounds`` times at once."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            start.wait()
            for _ in range(rounds):
                status: int | str  # the HTTP status, or the name of the transport error
                try:
                    status = http.post(url, files={"file": ("x.png", payload)}).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@contextmanager
def healthz_probe(base: str) -> Iterator[list[float]]:
    """Seconds each ``/healthz`` took, asked every 0.5 s while the block runs (a liveness
    check must answer while uploads wait for the decode slots)."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            started = time.monotonic()
            with suppress(httpx.HTTPError):
                httpx.get(f"{base}/healthz", timeout=60)
            latencies.append(time.monotonic() - started)
            stop.wait(0.5)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def slow_clients(base: str, port: int, count: int, header_timeout: float) -> tuple[int, Counter]:
    """Connections still open ``header_timeout`` + 2 s after they stalled mid-head, and the
    statuses of normal requests sent meanwhile (one every 0.5 s)."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multi")
        sockets.append(sock)
    statuses: Counter = Counter()
    deadline = time.monotonic() + header_timeout + 2
    while time.monotonic() < deadline:
        try:
            statuses[httpx.get(f"{base}/healthz", timeout=10).status_code] += 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
        time.sleep(0.5)
    held = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            held += sock.recv(1) != b""  # b"": closed by the server
        except BlockingIOError:
            held += 1  # still open, nothing sent
        except OSError:
            pass
        sock.close()
    return held, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--header-timeout", type=float, default=10, help="the server's")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("serve_flags", nargs="*", help="after --: more `pneumolab serve` flags")
    args = parser.parse_args()

    port = free_port()
    flags = ["--header-timeout", str(args.header_timeout), *args.serve_flags]
    server = start_server(args.run_dir, args.backend, port, flags=flags)
    base = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, Counter, float, float, float | None]] = []
    url = f"{base}/v1/predict"
    try:
        idle_mb = peak_rss_mb(server.pid)
        small = io.BytesIO()
        Image.fromarray(np.full((64, 64), 128, np.uint8)).save(small, "PNG")
        phases = [
            (
                "16-bit 7000x7000 PNG",
                lambda: upload_many(url, bomb_png(), args.clients, args.rounds),
            ),
            ("25 MB upload", lambda: upload_many(url, b"\0" * 25_000_000, args.clients, 1)),
            ("header: 30000x30000", lambda: upload_many(url, header_bomb_png(), args.clients, 1)),
        ]
        for name, phase in phases:
            started = time.monotonic()
            with healthz_probe(base) as latencies:
                statuses = phase()
            seconds = time.monotonic() - started
            rows.append((name, statuses, seconds, peak_rss_mb(server.pid), max(latencies)))
        started = time.monotonic()
        held, statuses = slow_clients(base, port, args.slow, args.header_timeout)
        slow_name = f"{args.slow} slow clients ({held} still held after timeout + 2 s): /healthz"
        rows.append(
            (slow_name, statuses, time.monotonic() - started, peak_rss_mb(server.pid), None)
        )
        started = time.monotonic()
        with healthz_probe(base) as latencies:
            statuses = upload_many(url, small.getvalue(), args.clients, 10)
        seconds = time.monotonic() - started
        rows.append(("small PNG", statuses, seconds, peak_rss_mb(server.pid), max(latencies)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"run `{args.run_dir}`, {args.backend}, {args.clients} clients; server flags {flags}")
    print(f"server peak RSS when idle: {idle_mb:.0f} MB\n")
    print(
        "| phase | answers (status: count) | errors | s | server peak RSS MB | slowest /healthz s |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, statuses, seconds, peak, slowest in rows:
        errors = sum(n for status, n in statuses.items() if status not in EXPECTED)
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=str))
        probe = "—" if slowest is None else f"{slowest:.2f}"
        print(f"| {name} | {answers} | {errors} | {seconds:.1f} | {peak:.0f} | {probe} |")


if __name__ == "__main__":
    main()
