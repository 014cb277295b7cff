"""In a real Chromium: a page of another site, and a DNS-rebinding page that reaches the server under its own name,
try every way a page can send a request; none gets an answer and no model runs."""

from __future__ import annotations

import http.server
import threading
import time
from urllib.parse import urlsplit

import pytest

from edgemm.bench.serve import ServerProcess, health
from edgemm.runtime.bundle import models_dir
from tests.server.test_server_browser import CHROMIUM, DRIVER, _browser, _wait

pytestmark = pytest.mark.slow
REBIND = "rebind.evil.example"

ATTACK = """<!doctype html><meta charset="utf-8"><title>evil</title>
<form id="form" method="POST" enctype="application/x-www-form-urlencoded" target="sink">
<input name="session" value="abcdefghijkl"><input name="text" value="What is the capital of France?"></form>
<iframe name="sink"></iframe>
<script>
window.results = {};
const body = JSON.stringify({model: "x", max_tokens: 8, messages: [{role: "user", content: "Capital of France?"}]});
async function attempt(name, url, init) {
  try {
    const response = await fetch(url, init);
    window.results[name] = {status: response.status, text: response.type === "opaque" ? "" : await response.text()};
  } catch (e) { window.results[name] = {error: String(e)}; }
}
async function run(target) {
  document.getElementById("form").action = target + "/v1/assistant";
  document.getElementById("form").submit();
  await attempt("no-cors text/plain", target + "/v1/chat/completions",
                {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body});
  await attempt("cors json", target + "/v1/chat/completions",
                {method: "POST", headers: {"Content-Type": "application/json"}, body});
  window.done = true;
}
</script>"""


@pytest.fixture(scope="module")
def server():
    llm = models_dir() / "smollm2-135m-instruct-int4"
    if not (llm / "manifest.json").exists():
        pytest.skip(f"{llm} missing: run `make setup`")
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian chromium and chromium-driver (make setup installs them)")
    pytest.importorskip("starlette")
    with ServerProcess("--model", str(llm), "--no-speech", "--no-vision", "--no-tts") as process:
        yield process


@pytest.fixture(scope="module")
def evil_site():
    """http://localhost:PORT/ serving ATTACK: another origin, another site than http://127.0.0.1:SERVER."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(ATTACK.encode())

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{site.server_address[1]}"
    site.shutdown()


def _attack(driver, page: str, target: str) -> dict:
    driver.get(page)
    driver.execute_script(f"run({target!r})")
    _wait(lambda: driver.execute_script("return window.done === true"), 60, "the page's attempts")
    time.sleep(1.0)  # the form's navigation
    return driver.execute_script("return window.results")


def test_a_page_of_another_site_gets_no_answer(server, evil_site):
    before = health(server.url)["workers"]["llm"]["done"]
    driver = _browser()
    try:
        results = _attack(driver, evil_site + "/", server.url)
        print(results)
        assert results["no-cors text/plain"] == {"status": 0, "text": ""}  # sent blind, and refused (415)
        assert "error" in results["cors json"]  # the browser's preflight was refused: nothing sent
        sink = driver.execute_script(
            "try { return frames['sink'].document.body.innerText } catch (e) { return 'blocked' }"
        )
        assert "Paris" not in sink
    finally:
        driver.quit()
    assert health(server.url)["workers"]["llm"]["done"] == before, "a model ran for another site's page"


def test_a_rebinding_page_gets_no_answer(server):
    port = urlsplit(server.url).port
    before = health(server.url)["workers"]["llm"]["done"]
    # The rebinding page's name resolves to the server itself, as after the attacker's DNS answer changed.
    driver = _browser(f"--host-resolver-rules=MAP {REBIND} 127.0.0.1")
    try:
        driver.get(f"http://{REBIND}:{port}/")
        assert "edgemm assistant" not in driver.page_source and "bad_host" in driver.page_source
        reply = driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
                  body: JSON.stringify({model: "x", messages: [{role: "user", content: "Capital of France?"}]})})
              .then(r => r.text().then(t => done([r.status, t]))).catch(e => done([0, String(e)]));"""
        )
        assert reply[0] == 403 and "bad_host" in reply[1] and "Paris" not in reply[1], reply
    finally:
        driver.quit()
    assert health(server.url)["workers"]["llm"]["done"] == before
