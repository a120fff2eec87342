"""The server under hostile clients: slow headers, slow bodies, too many connections, decodes
beyond the slots; and API docs that load nothing from the internet. Loopback only."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from conftest import free_port, serving
from pneumolab.serving.app import create_app
from pneumolab.serving.limits import DecodeSlots, ServerLimits, uvicorn_config

LIMITS = ServerLimits(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=8)


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run[0]  # only read


@pytest.fixture(scope="module")
def server(run_dir):
    config = uvicorn_config(
        create_app(run_dir, limits=LIMITS), "127.0.0.1", free_port(), LIMITS, log_level="warning"
    )
    with serving(config) as url:
        yield url, config.port


def closed_after(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None if still open after ``seconds``)."""
    sock.settimeout(seconds)
    start = time.monotonic()
    try:
        while sock.recv(1024):
            pass
    except TimeoutError:
        return None
    return time.monotonic() - start


def test_a_client_that_never_finishes_its_headers_is_cut_off(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        assert closed_after(slow, 5) is not None


def test_a_body_that_never_arrives_gets_408(server):
    _, port = server
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n"
        )
        slow.settimeout(5)
        answer = b""
        while b"}" not in answer and (chunk := slow.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"within 0.5 s" in answer


def test_connections_beyond_the_limit_get_503(server):
    url, port = server
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.1)
        assert httpx.get(f"{url}/healthz").status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.1)
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_decodes_beyond_the_slots_get_503_with_retry_after():
    slots = DecodeSlots(1, wait_s=0.05)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with slots.held():
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    with pytest.raises(HTTPException) as refused, slots.held():
        pass
    release.set()
    thread.join()
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
    with slots.held():  # free again
        pass


def test_api_docs_load_nothing_from_the_internet(run_dir):
    client = TestClient(create_app(run_dir))
    html = client.get("/docs").text
    assert "/docs-assets/" in html and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200
    assert client.get("/redoc").status_code == 404  # its bundle fetches a logo from a CDN
