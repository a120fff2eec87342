"""The web page in headless Chromium (Playwright): upload an X-ray, see probability, label, heat map."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from conftest import SHARED_FULLRES, free_port, serving
from pneumolab.serving.app import create_app

pytestmark = pytest.mark.slow  # drives a browser (Chromium)


@pytest.fixture(scope="module")
def server(tiny_run) -> Iterator[str]:
    """The shared tiny run served by uvicorn in a thread (it only reads); yields its base URL."""
    config = uvicorn.Config(
        create_app(tiny_run[0]), host="127.0.0.1", port=free_port(), log_level="warning"
    )
    with serving(config) as url:
        yield url


@pytest.fixture
def xray(tmp_path) -> Path:
    """A real full-resolution X-ray when the shared sample is present, else a synthetic PNG."""
    if SHARED_FULLRES.is_dir():
        return sorted((SHARED_FULLRES / "PNEUMONIA").iterdir())[0]
    pixels = np.random.default_rng(0).normal(120, 40, (300, 360)).clip(0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "xray.png")
    return tmp_path / "xray.png"


def test_upload_shows_probability_label_and_heatmap(server, xray, tmp_path, chromium):
    from playwright.sync_api import expect

    expected = httpx.post(
        f"{server}/v1/predict", files={"file": (xray.name, xray.read_bytes())}, timeout=60
    ).json()
    page = chromium.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server)
    expect(page.locator(".notice")).to_contain_text("not a diagnosis")
    page.set_input_files("#file-input", str(xray))
    expect(page.locator("#result")).to_be_visible(timeout=60_000)
    page.wait_for_function(
        "['image', 'heatmap'].every(id => document.getElementById(id).naturalWidth > 0)"
    )
    shown = f"{100 * expected['probability']:.1f}%"
    expect(page.locator("#probability")).to_have_text(shown)
    expect(page.locator("#label")).to_have_text(expected["label"])
    assert page.locator("#status").text_content().startswith(f"{xray.name}: done")
    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("PNEUMOLAB_ARTIFACTS"):
        artifacts = Path(os.environ["PNEUMOLAB_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, artifacts / "serving_page.png")


def test_a_plain_text_refusal_shows_its_status(server, xray, chromium):
    """uvicorn's own 503 beyond --max-connections is plain text, not pneumolab's JSON."""
    from playwright.sync_api import expect

    page = chromium.new_page()
    page.route(
        "**/v1/predict*",
        lambda route: route.fulfill(
            status=503, body="Service Unavailable", content_type="text/plain"
        ),
    )
    page.goto(server)
    page.set_input_files("#file-input", str(xray))
    expect(page.locator("#status")).to_have_text("Error 503: Service Unavailable", timeout=30_000)


def test_an_answer_without_an_ood_threshold_is_shown(server, xray, chromium):
    """An ensemble without its own OOD model answers a score and no threshold."""
    import json

    from playwright.sync_api import expect

    answer = httpx.post(
        f"{server}/v1/predict", files={"file": (xray.name, xray.read_bytes())}, timeout=60
    ).json()
    answer.pop("ood_threshold", None)
    page = chromium.new_page()
    page.route(
        "**/v1/predict*",
        lambda route: route.fulfill(
            status=200, body=json.dumps(answer), content_type="application/json"
        ),
    )
    page.goto(server)
    page.set_input_files("#file-input", str(xray))
    expect(page.locator("#in-scope")).to_contain_text("no OOD model", timeout=30_000)


def test_a_newer_upload_wins_and_the_same_file_can_be_sent_again(server, xray, tmp_path, chromium):
    """An earlier, slower answer replaced the newer one's; choosing the same file again sent
    nothing (the input kept its value, so no change event)."""
    import json

    from playwright.sync_api import expect

    other = tmp_path / "other.png"
    Image.fromarray(np.full((300, 360), 90, dtype=np.uint8)).save(other)
    held, sent = [], []

    def answer(route) -> None:
        sent.append(route.request.url)
        if len(sent) == 1:
            held.append(route)  # the first upload's answer comes last
        else:
            route.continue_()

    page = chromium.new_page()
    page.route("**/v1/predict*", answer)
    page.goto(server)
    page.set_input_files("#file-input", str(xray))
    page.set_input_files("#file-input", str(other))
    expect(page.locator("#status")).to_have_text(re.compile(r"^other\.png: done"), timeout=60_000)
    stale = {
        "probability": 0.5, "label": "STALE", "threshold": 0.5, "threshold_provenance": "x",
        "in_scope": True, "reasons": [], "warnings": [], "timing_ms": 1, "image_png_base64": "",
    }  # fmt: skip
    with contextlib.suppress(Exception):  # the page cancelled it: nothing to answer
        held[0].fulfill(status=200, content_type="application/json", body=json.dumps(stale))
    page.wait_for_timeout(500)  # time for a stale answer to be shown, were it read
    expect(page.locator("#label")).not_to_have_text("STALE")
    assert page.locator("#status").text_content().startswith("other.png: done")
    with page.expect_request("**/v1/predict*"):  # the same file again: sent again
        page.set_input_files("#file-input", str(other))


def test_a_drop_of_several_files_or_of_none_says_so(server, xray, chromium):
    """Three dropped X-rays showed one answer and "done", the other two silently left out; a
    link dragged from a viewer (no file) did nothing at all."""
    from playwright.sync_api import expect

    page = chromium.new_page()
    page.goto(server)
    data = xray.read_bytes()

    def drop(count: int) -> None:
        page.evaluate(
            """([count, bytes]) => {
                const transfer = new DataTransfer();
                for (let i = 0; i < count; i++) {
                    transfer.items.add(new File([new Uint8Array(bytes)], `x${i}.jpeg`));
                }
                const drop = document.getElementById("drop");
                drop.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
            }""",
            [count, list(data)],
        )

    drop(0)
    expect(page.locator("#status")).to_have_text(re.compile("^No file in what was dropped"))
    drop(3)
    expect(page.locator("#status")).to_have_text(
        re.compile(r"^x0\.jpeg: done .*\(3 files dropped: only this one is analysed"),
        timeout=60_000,
    )


def _page_answering(chromium, pattern: str, body: dict):
    """A new page on which requests matching ``pattern`` are answered with ``body`` (JSON)."""
    import json

    page = chromium.new_page()
    page.route(
        pattern,
        lambda route: route.fulfill(
            status=200, body=json.dumps(body), content_type="application/json"
        ),
    )
    return page


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        (
            {"subtype": "VIRAL", "p_normal": 0.1, "p_bacterial": 0.2, "p_viral": 0.7},
            "VIRAL — NORMAL 10.0%, BACTERIAL 20.0%, VIRAL 70.0%",
        ),
        (
            {"backend": "onnx", "subtype": None, "p_normal": None, "p_bacterial": None}
            | {"p_viral": None},
            "not available (the onnx backend gives the probability of pneumonia only)",
        ),
        ({}, None),  # a binary run's answer: no subtype row
    ],
)
def test_a_three_class_answer_shows_its_subtype(server, xray, chromium, fields, shown):

    from playwright.sync_api import expect

    answer = httpx.post(
        f"{server}/v1/predict", files={"file": (xray.name, xray.read_bytes())}, timeout=60
    ).json()
    page = _page_answering(chromium, "**/v1/predict*", answer | fields)
    page.goto(server)
    page.set_input_files("#file-input", str(xray))
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    if shown is None:
        expect(page.locator("#subtype")).to_be_hidden()
        expect(page.locator("#subtype-term")).to_be_hidden()
    else:
        expect(page.locator("#subtype")).to_have_text(shown)
        expect(page.locator("#subtype-term")).to_be_visible()


THREE = {"task": "three_class", "subtype_names": ["NORMAL", "BACTERIAL", "VIRAL"]}


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        (
            THREE | {"subtypes_available": True},
            "torch backend, three classes (NORMAL / BACTERIAL / VIRAL)",
        ),
        (
            THREE | {"subtypes_available": False, "backend": "onnx"},
            "three classes (NORMAL / BACTERIAL / VIRAL) — no subtypes with the onnx backend",
        ),
        ({}, None),  # the binary run served: no classes named
    ],
)
def test_the_model_line_names_a_three_class_runs_classes(server, chromium, fields, shown):

    from playwright.sync_api import expect

    info = httpx.get(f"{server}/v1/model", timeout=60).json()
    page = _page_answering(chromium, "**/v1/model", info | fields)
    page.goto(server)
    expect(page.locator("#model")).to_contain_text(f"model {info['model']}")
    if shown is None:
        expect(page.locator("#model")).not_to_contain_text("three classes")
    else:
        expect(page.locator("#model")).to_contain_text(shown)
