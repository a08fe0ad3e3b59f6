"""The page for people, in a real browser: headless Chromium against a real server.

Chromium is Debian's package, driven by Playwright's Python package with the
system browser as its executable (Playwright's own browser download is neither
used nor needed). When it is missing and this runs as root with apt-get, the
session fixture installs it, so the README's test command works on a fresh CI
machine with no manual step.

Every check reads the numbers back from the page (the charts' ``data-series``)
and compares them with the API's own answer, fetched here over HTTP.

``LSTM_UI_SCREENSHOT=docs/ui.png pytest tests/http/ui/test_page.py`` rewrites the
README's screenshot from the first test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from service.settings import DEFAULT_REPOSITORY
from tests.browser import find_or_install_chromium

ROOT = Path(__file__).resolve().parents[3]
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_or_install_chromium()
    if executable is None:
        reason = "no chromium, and not root with apt-get to install Debian's package"
        if os.environ.get("CI"):  # CI must run the browser test, never skip it silently
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        yield _launch(playwright, executable)


def _launch(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])


class Watched:
    """A page with every request and every console error or page error recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.authorization: list[str | None] = []
        page.on("request", self._on_request)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _on_request(self, request: Any) -> None:
        self.requests.append(request.url)
        if "/v1/" in request.url:
            self.authorization.append(request.headers.get("authorization"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def outside_requests(self) -> list[str]:
        return [u for u in self.requests if urlsplit(u).hostname != "127.0.0.1"]


@pytest.fixture
def served(server_factory: Callable[..., Any]) -> Any:
    """The service on the default repository, as the README's first command serves it."""
    return server_factory(DEFAULT_REPOSITORY)


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1150, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield Watched(page)
    context.close()


def open_page(watched: Watched, url: str) -> Page:
    page = watched.page
    response = page.goto(f"{url}/")  # the printed address leads to the page
    assert response is not None and response.ok
    assert page.url == f"{url}/ui/"
    page.wait_for_selector("#examples button.example")
    return page


def plotted(page: Page, chart: str) -> dict[str, Any]:
    value = page.get_attribute(f"#{chart}", "data-series")
    assert value, f"#{chart} has no plot"
    result: dict[str, Any] = json.loads(value)
    return result


def wait_for_plot(page: Page, chart: str, kind: str) -> dict[str, Any]:
    page.wait_for_function(
        "([chart, kind]) => window.lstmUi.plots[chart]?.kind === kind", arg=[chart, kind]
    )
    return plotted(page, chart)


def api_predict(url: str, instance: Any, return_sequences: bool) -> Any:
    response = httpx.post(
        f"{url}/v1/models/basic_motions/versions/1:predict",
        json={"instances": [instance], "return_sequences": return_sequences},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def examples_of(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/ui/models/basic_motions/versions/1/examples", timeout=10)
    assert response.status_code == 200
    examples: list[dict[str, Any]] = response.json()["examples"]
    return examples


def assert_close(got: list[float], want: list[float], tolerance: float = TOLERANCE) -> None:
    assert len(got) == len(want)
    worst = max(abs(g - w) for g, w in zip(got, want, strict=True))
    assert worst <= tolerance, f"plotted values differ from the API's by {worst}"


def curl_body(page: Page) -> str:
    match = re.search(r"<<'EOF'\n(.*)\nEOF", page.inner_text("#curl-snippet"), re.S)
    assert match, page.inner_text("#curl-snippet")
    return match.group(1)


def test_example_predict_in_both_modes_plots_the_api_answer(
    served: Any, watched: Watched, tmp_path: Path
) -> None:
    page = open_page(watched, served.url)
    info = page.inner_text("#model-info")
    for expected in (
        "classification",
        "badminton, running, standing, walking",
        "LSTM 64",
        "test_accuracy 1",
        "max |diff|",
    ):
        assert expected in info
    example = examples_of(served.url)[3]
    assert example["label"] == "walking"

    # One click on the example shows the probabilities over time; Predict does it again.
    page.click("#examples button[data-example='3']")
    page.click("#predict")
    drawn_input = wait_for_plot(page, "input-chart", "lines")
    for f, channel in enumerate(drawn_input["series"]):
        assert channel["values"] == [step[f] for step in example["timesteps"]]
    drawn = wait_for_plot(page, "output-chart", "lines")
    answer = api_predict(served.url, example["timesteps"], return_sequences=True)
    assert [s["name"] for s in drawn["series"]] == ["badminton", "running", "standing", "walking"]
    for k, series in enumerate(drawn["series"]):
        assert_close(series["values"], [step["probabilities"][k] for step in answer])
    page.wait_for_selector("#final-result:not([hidden])")
    assert page.inner_text("#final-label") == answer[-1]["label"]
    assert page.inner_text("#true-label") == "walking"
    screenshot = Path(os.environ.get("LSTM_UI_SCREENSHOT", tmp_path / "ui.png"))
    page.evaluate("() => window.scrollTo(0, 0)")  # boxes in page coordinates
    box = page.locator("#predict-section").bounding_box()
    assert box is not None
    # Down to the plotted answer: the README's picture, kept small.
    height = box["y"] + box["height"] + 8
    clip = {"x": 0, "y": 0, "width": 1150, "height": height}
    page.screenshot(path=str(screenshot), full_page=True, clip=clip)  # type: ignore[arg-type]

    # The curl snippet is what the page sent: replaying it gives the same answer.
    body = curl_body(page)
    assert '"return_sequences": true' in body
    assert "/v1/models/basic_motions/versions/1:predict" in page.inner_text("#curl-snippet")

    page.check("#mode-final")
    page.click("#predict")
    bars = wait_for_plot(page, "output-chart", "bars")
    final = api_predict(served.url, example["timesteps"], return_sequences=False)
    assert bars["labels"] == ["badminton", "running", "standing", "walking"]
    assert_close(bars["values"], final["probabilities"])
    assert page.inner_text("#final-label") == final["label"]
    assert float(page.inner_text("#final-probability")) == pytest.approx(
        max(final["probabilities"]), abs=1e-4
    )
    replayed = httpx.post(
        f"{served.url}/v1/models/basic_motions/versions/1:predict",
        content=curl_body(page),
        headers={"Content-Type": "application/json"},
        timeout=30,
    ).json()["predictions"][0]
    assert_close(replayed["probabilities"], bars["values"])

    # The Python snippet runs as shown, with tritonclient, and prints the same answer.
    snippet = page.inner_text("#python-snippet")
    assert "tritonclient.http" in snippet and "final_output" in snippet
    run = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    printed = [float(v) for v in re.findall(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?", run.stdout)]
    assert_close(printed, final["probabilities"], tolerance=1e-4)

    assert watched.errors == []
    assert watched.requests and watched.outside_requests() == []
    assert f"the page for people: {served.url}/ui/" in served.log()


def test_streaming_receives_every_step_and_stops_and_resets(served: Any, watched: Watched) -> None:
    page = open_page(watched, served.url)
    example = examples_of(served.url)[0]
    steps = len(example["timesteps"])
    answer = api_predict(served.url, example["timesteps"], return_sequences=True)
    whole = [[step["probabilities"][k] for step in answer] for k in range(4)]
    page.click("#examples button[data-example='0']")
    page.wait_for_selector("#stream-start:not([disabled])")

    def streamed_all() -> None:
        # Functions, not expression strings: the page's CSP forbids eval, rightly.
        page.wait_for_function(
            "(n) => document.getElementById('stream-steps').textContent === String(n)", arg=steps
        )
        drawn = plotted(page, "stream-chart")
        for k, series in enumerate(drawn["series"]):
            assert len(series["values"]) == steps  # a point for every step
            assert_close(series["values"], whole[k], tolerance=1e-5)

    # Every step, one message each, as fast as the server answers.
    page.fill("#stream-delay", "0")
    page.fill("#stream-chunk", "1")
    page.click("#stream-start")
    streamed_all()
    assert "done" in page.inner_text("#stream-status")

    # Reset zeroes the count, the plot and the server's state: a second pass equals the first.
    page.click("#stream-reset")
    assert page.inner_text("#stream-steps") == "0"
    assert all(s["values"] == [] for s in plotted(page, "stream-chart")["series"])

    # Stop halts it mid-way; Start resumes on the carried state.
    page.fill("#stream-delay", "40")
    page.fill("#stream-chunk", "3")
    page.click("#stream-start")
    page.wait_for_function("() => Number(document.getElementById('stream-steps').textContent) >= 9")
    page.click("#stream-stop")
    page.wait_for_timeout(300)  # an answer in flight may still land
    held = page.inner_text("#stream-steps")
    page.wait_for_timeout(500)
    assert page.inner_text("#stream-steps") == held
    assert 0 < int(held) < steps
    assert "stopped" in page.inner_text("#stream-status")
    page.fill("#stream-delay", "0")
    page.click("#stream-start")
    streamed_all()
    assert "sequence_output" in page.inner_text("#python-snippet")

    assert watched.errors == []
    assert watched.outside_requests() == []


@pytest.mark.parametrize(
    "paste",
    [
        "1,2,3\n4,5,6",  # 3 features where the model expects 6
        "[[1, 2, 3, 4, 5, 6], [1, 2,",  # not JSON at all
        '[[1, 2, 3, 4, 5, "six"]]',  # a string where a number belongs
    ],
)
def test_a_malformed_paste_shows_the_servers_message(
    served: Any, watched: Watched, paste: str
) -> None:
    page = open_page(watched, served.url)
    page.fill("#api-key", "secret-key-1")  # keys are off on this server: sent, and ignored
    page.fill("#paste", paste)
    page.click("#use-paste")
    page.click("#predict")
    page.wait_for_selector("#error:not([hidden])")
    sent = curl_body(page)
    response = httpx.post(
        f"{served.url}/v1/models/basic_motions/versions/1:predict",
        content=sent,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code in (400, 422)
    assert page.inner_text("#error-message") == response.json()["error"]
    assert page.inner_text("#error-status") == f"HTTP {response.status_code}"
    assert not page.get_attribute("#output-chart", "data-series")

    # The key went as a bearer token, and lives only in the page's memory.
    assert watched.authorization[-1] == "Bearer secret-key-1"
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert "secret-key-1" not in page.inner_text("#curl-snippet")
    assert watched.outside_requests() == []


def test_a_forecast_is_plotted_against_its_input(served: Any, watched: Watched) -> None:
    """Regression (sunspots, per-timestep): the outputs and the input on one time axis."""
    page = open_page(watched, served.url)
    page.select_option("#model-select", label="sunspots — version 1")
    page.wait_for_function("() => window.lstmUi.state.model?.name === 'sunspots'")
    values = [5.0, 24.4, 42.0, 63.5, 53.8, 62.0, 48.5, 43.9, 18.6, 5.7, 3.6, 1.4]
    page.fill("#paste", "year_value\n" + "\n".join(str(v) for v in values))  # CSV, a header
    page.click("#use-paste")
    page.click("#predict")
    page.wait_for_function("() => window.lstmUi.plots['output-chart']?.series.length === 2")
    drawn = plotted(page, "output-chart")
    response = httpx.post(
        f"{served.url}/v1/models/sunspots/versions/1:predict",
        json={"instances": [[[v] for v in values]], "return_sequences": True},
        timeout=30,
    )
    forecast = [step[0] for step in response.json()["predictions"][0]]
    assert [s["name"] for s in drawn["series"]] == ["output", "input: sunspot_number"]
    assert_close(drawn["series"][0]["values"], forecast)
    assert drawn["series"][1]["values"] == values
    assert page.is_hidden("#error")
    assert watched.outside_requests() == []


def test_the_page_works_with_keys_on(server_factory: Callable[..., Any], watched: Watched) -> None:
    """With API keys on, the page lists nothing until given a key, then predicts and
    streams with it (the WebSocket carries it as the subprotocol bearer.<key>)."""
    key = "page-" + "k" * 32
    served = server_factory(
        DEFAULT_REPOSITORY, {"LSTM_SERVE_API_KEYS": json.dumps([f"page:inference:{key}"])}
    )
    page = watched.page
    response = page.goto(f"{served.url}/")
    assert response is not None and response.ok  # the page itself needs no key
    page.wait_for_function(
        "() => document.getElementById('models-status').textContent.includes('could not list')"
    )
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    page.locator("#api-key").blur()
    page.wait_for_selector("#examples button.example")
    page.click("#examples button[data-example='3']")
    page.click("#predict")
    drawn = wait_for_plot(page, "output-chart", "lines")
    headers = {"Authorization": f"Bearer {key}"}
    example = httpx.get(
        f"{served.url}/ui/models/basic_motions/versions/1/examples", headers=headers
    ).json()["examples"][3]
    answer = httpx.post(
        f"{served.url}/v1/models/basic_motions/versions/1:predict",
        json={"instances": [example["timesteps"]], "return_sequences": True},
        headers=headers,
    ).json()["predictions"][0]
    for k, series in enumerate(drawn["series"]):
        assert_close(series["values"], [step["probabilities"][k] for step in answer])

    page.fill("#stream-delay", "0")
    page.fill("#stream-chunk", "10")
    page.click("#stream-start")
    steps = len(example["timesteps"])
    page.wait_for_function(
        "(n) => document.getElementById('stream-steps').textContent === String(n)", arg=steps
    )
    assert set(watched.authorization[1:]) == {f"Bearer {key}"}  # every call after the first
    assert watched.errors == [] or all("401" in e for e in watched.errors)
    assert '"key_id":"page"' in served.log() and key not in served.log()
