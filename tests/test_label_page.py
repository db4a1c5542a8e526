"""The labelling page in a real browser: Debian's chromium driven by selenium through chromedriver.

A human-oracle experiment on an unlabelled folder stops at cycle 1's batch; `galot label
serve` serves the page; the "person" (this test) labels the images by clicking class
buttons and with a keyboard shortcut, answers one "skip", undoes and redoes an answer,
reloads the page half-way (nothing may be lost), and presses done. The page's done must
continue the experiment: cycle 1 trains and evaluates, and cycle 2's batch appears on
the same page. A screenshot of the page is saved (tmp folder; also to
``$GALOT_SCREENSHOT_DIR/label-page.png`` when set — that is how docs/img/label-page.png is made:
``GALOT_SCREENSHOT_DIR=docs/img python -m pytest tests/test_label_page.py``).

The browser comes from the project's setup (`make test` runs tests/install_browser.sh,
which installs the Debian packages chromium and chromium-driver when missing); without
them the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from galot_core import labels
from galot_core.config import config_from_dict
from galot_core.experiment import Experiment
from tests.test_labels import human_params

BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("GALOT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GALOT_CHROMEDRIVER", "/usr/bin/chromedriver")

pytestmark = pytest.mark.usefixtures("one_thread")
N = 12  # images per batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing: run `bash tests/install_browser.sh` as root "
                    "(Debian packages chromium, chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1180,820", "--force-device-scale-factor=1"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: galot label serve exited with {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Person:
    """The "person" at the labelling page: reads it and answers with the true class (click or key)."""

    def __init__(self, browser, names: list[str], truth: dict[str, str]):
        from selenium.webdriver.common.by import By

        self.browser, self.names, self.truth, self.by = browser, names, truth, By
        self.given: dict[str, str] = {}

    def text(self, css: str) -> str:
        return self.browser.find_element(self.by.CSS_SELECTOR, css).text

    def progress(self) -> str:
        try:
            return self.text("#progress")
        except Exception:  # the page is (re)loading
            return ""

    def current_image(self) -> str:
        return self.text(".card.current .name")

    def answer_current(self, how: str = "click") -> str:
        image = self.current_image()
        cls = self.truth[image]
        before = self.progress()
        if how == "key":
            self.browser.find_element(self.by.TAG_NAME, "body").send_keys(str((self.names.index(cls) + 1) % 10))
        else:
            self.browser.find_element(self.by.CSS_SELECTOR, f'button.class[data-answer="{cls}"]').click()
        wait_until(lambda: self.progress() != before, 10, "the answer to be saved")
        return image

    def answer(self, how: str = "click") -> str:
        """Answer the current image and remember the answer as given."""
        image = self.answer_current(how)
        self.given[image] = self.truth[image]
        return image

    def done_disabled(self) -> bool:
        return self.browser.find_element(self.by.ID, "done").get_attribute("disabled") is not None


@contextmanager
def label_serve(run: Path, params: Path, cwd: Path):
    """`galot label serve RUN` in its own process; its URL and process, stopped with Ctrl-C at the end."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PREFECT_API_URL", None)
    serve = subprocess.Popen([str(BIN / "galot"), "label", "serve", str(run), "--params", str(params),
                              "--port", str(port)], cwd=cwd, env=env, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}/", serve
    finally:
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            serve.wait(timeout=60)
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)


def _first_five_and_a_reload(person: Person) -> None:
    by, browser = person.by, person.browser
    wait_until(lambda: person.progress() == f"0 / {N} labelled", 20, "the batch")
    assert len(browser.find_elements(by.CSS_SELECTOR, ".card img")) == N
    assert [b.get_attribute("data-answer") for b in browser.find_elements(by.CSS_SELECTOR, "button.class")] \
        == person.names
    for how in ("click", "key", "click", "key", "click"):
        person.answer(how)
    assert person.progress() == f"5 / {N} labelled"

    # A reload half-way: everything given so far is still there.
    browser.refresh()
    wait_until(lambda: person.progress() == f"5 / {N} labelled", 20, "the reloaded page")
    shown = {c.find_element(by.CSS_SELECTOR, ".name").text: c.find_element(by.CSS_SELECTOR, ".answer").text
             for c in browser.find_elements(by.CSS_SELECTOR, ".card")}
    assert {k: v for k, v in shown.items() if v} == person.given


def _skip_undo_and_the_rest(person: Person, run: Path, shot: Path) -> str:
    """Skip one ("none of these classes"), label one, undo it, label it again, then all the rest;
    the skipped image."""
    browser, by = person.browser, person.by
    skipped = person.current_image()
    browser.find_element(by.ID, "skip").click()
    wait_until(lambda: person.progress() == f"6 / {N} labelled", 10, "the skip")
    image = person.answer_current()
    browser.find_element(by.ID, "undo").click()
    wait_until(lambda: person.progress() == f"6 / {N} labelled", 10, "the undo")
    assert person.current_image() == image
    person.given[person.answer_current()] = person.truth[image]  # the same image again
    for _ in range(2):
        person.answer("key")
    assert person.done_disabled()
    browser.save_screenshot(str(shot))
    if os.environ.get("GALOT_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["GALOT_SCREENSHOT_DIR"]) / "label-page.png")
    while person.progress() != f"{N} / {N} labelled":
        person.answer()
    answers = {a["image"]: a["answer"] for a in labels.read_answers(run, 1)}  # saved as given
    assert answers == {**person.given, skipped: "skip"}
    assert not person.done_disabled()
    return skipped


def _done_continues_to_cycle_2(person: Person, run: Path, skipped: str, url: str, serve) -> None:
    """Done: the experiment continues (cycle 1 trains) and stops at cycle 2, shown on the page."""
    names, truth = person.names, person.truth
    person.browser.find_element(person.by.ID, "done").click()
    wait_until(lambda: "cycle 2" in person.text("#title") and person.progress() == f"0 / {N} labelled", 300,
               "cycle 2's batch on the page", serve)
    metrics = json.loads((run / "cycles" / "cycle_001" / "metrics.json").read_text())
    assert metrics["labelled"] == N - 1 and 0.0 <= metrics["test_accuracy"] <= 1.0
    pool = json.loads((run / "pool.json").read_text())
    batch = labels.read_batch(run, 1)
    assert list(zip(pool["labelled"], pool["labels"])) == [
        (it.index, names.index(truth[it.image])) for it in batch.items if it.image != skipped]
    assert pool["removed"] == [next(it.index for it in batch.items if it.image == skipped)]
    # The `galot run` that done started has stopped at cycle 2's batch (exit status 3).
    wait_until(lambda: _state(url).get("activity", "") is None, 120, "the experiment to stop", serve)


def test_label_page_in_a_browser(tmp_path, browser, digit_folder):
    folder, names, truth = digit_folder
    params = human_params(tmp_path, folder, names, "unused", mode="al", name="page", budget=N)
    exp = Experiment(config_from_dict(yaml.safe_load(params.read_text())))
    with pytest.raises(labels.WaitingForLabels):
        exp.run_cycle()  # cycle 1 selects its batch and stops for labels
    run = exp.dir
    person = Person(browser, names, truth)
    with label_serve(run, params, tmp_path) as (url, serve):
        wait_until(lambda: _up(url), 60, "the labelling page", serve)
        browser.get(url)
        _first_five_and_a_reload(person)
        skipped = _skip_undo_and_the_rest(person, run, tmp_path / "label-page.png")
        _done_continues_to_cycle_2(person, run, skipped, url, serve)


def _state(url: str) -> dict:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "api/state", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return {}


def _up(url: str) -> bool:
    return bool(_state(url))


def test_page_server_refuses_foreign_requests(tmp_path, tiny_digits):
    """Only this page may change answers (token), only under its own host name (DNS rebinding),
    and only thumbnails under labels/ are served."""
    import threading
    import urllib.error
    import urllib.request

    from galot.flows.labelpage import LabelServer

    cfg = config_from_dict({"experiment": {"name": "s", "runs_dir": str(tmp_path), "mode": "al", "cycles": 1,
                                           "oracle": "human"}, "al": {"budget_per_cycle": 3}})
    exp = Experiment(cfg, dataset=tiny_digits)
    exp.start()
    picked = exp.select(1)
    server = LabelServer(exp.dir)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def request(path, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(server.url.rstrip("/") + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    try:
        label = {"cycle": 1, "index": picked[0], "answer": "seven"}
        assert request("/api/label", label)[0] == 403                                   # no token
        assert request("/api/label", label, {"X-Galot-Token": "guess"})[0] == 403
        assert request("/api/state", headers={"Host": f"evil.example:{server.port}"})[0] == 403
        assert request("/labels/../config.json")[0] == 404 and request("/labels/%2e%2e/pool.json")[0] == 404
        status, page = request("/")
        assert status == 200 and server.token.encode() in page
        status, body = request("/api/label", label, {"X-Galot-Token": server.token})
        assert status == 200 and json.loads(body)["labelled"] == 1
        status, body = request("/api/done", {"cycle": 1}, {"X-Galot-Token": server.token})
        assert status == 409 and "2 images still have no label" in json.loads(body)["error"]
        thumb = labels.read_batch(exp.dir, 1).items[0].thumbnail
        status, png = request("/" + thumb)
        assert status == 200 and png.startswith(b"\x89PNG")
    finally:
        server.shutdown()
