"""Load test of `pneumolab serve`: concurrent clients uploading one image for a fixed time.

    python benchmarks/serve_load.py RUN_DIR IMAGE [--backends torch onnx] [--clients 4]
        [--seconds 20] [--heatmap]

Each backend gets its own server process (`python -m pneumolab serve`, 127.0.0.1, a free
port); the clients are threads with one httpx connection each. Prints a Markdown table:
requests/s, latency percentiles (ms, client side, upload included) and failed requests.
The onnx backend is started with `--export`: RUN_DIR/model.onnx is exported first if missing.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from pneumolab.choices import BACKENDS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    run_dir: Path, backend: str, port: int, timeout: float = 180, flags: Sequence[str] = ()
) -> subprocess.Popen:
    """A `pneumolab serve` process (with extra ``flags``), returned once /healthz answers."""
    command = [sys.executable, "-m", "pneumolab", "serve", str(run_dir), "--port", str(port)]
    # stdout: uvicorn's access log, one line per request; stderr (start-up, errors) passes through
    export = ["--export"] if backend == "onnx" else []
    command += ["--backend", backend, *export, *flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode} ({backend})")
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).raise_for_status()
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit(f"server did not start within {timeout:.0f} s ({backend})")


def load(url: str, image: Path, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """Latencies (s) of the successful requests, the count of failed ones, the wall time (s)."""
    data, latencies, errors = image.read_bytes(), [], 0
    lock = threading.Lock()
    start_all = time.monotonic()
    deadline = start_all + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    ok = http.post(url, files={"file": (image.name, data)}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.monotonic() - start_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("image", type=Path, help="JPEG, PNG or DICOM to upload")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["torch", "onnx"])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20, help="duration per backend")
    parser.add_argument("--heatmap", action="store_true", help="ask for Grad-CAM (torch only)")
    args = parser.parse_args()

    rows = []
    for backend in args.backends:
        port = free_port()
        server = start_server(args.run_dir, backend, port)
        try:
            url = f"http://127.0.0.1:{port}/v1/predict" + ("?heatmap=true" if args.heatmap else "")
            load(url, args.image, 1, 1.0)  # warm-up
            latencies, errors, elapsed = load(url, args.image, args.clients, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
        ms = np.array(latencies) * 1000 if latencies else np.full(1, np.nan)
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        rate = len(latencies) / elapsed
        rows.append(
            f"| {backend} | {args.clients} | {len(latencies)} | {rate:.1f} "
            f"| {p50:.1f} | {p95:.1f} | {p99:.1f} | {errors} |"
        )
    print(f"run `{args.run_dir}`, image `{args.image.name}`, {args.seconds:g} s per backend\n")
    print("| backend | clients | requests | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
