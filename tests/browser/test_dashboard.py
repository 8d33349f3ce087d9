"""The dashboard in a real browser: headless Chromium (Debian's chromium and
chromium-driver) through Selenium, against a real daemon on a SQLite store.

A missing browser fails these tests, never skips them: ``.ci/run`` installs it.
With ``STEMD_SCREENSHOTS=1`` the main pages are saved into docs/images/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from stemd import RunStatus
from tests.helpers import http_sync
from tests.integration.daemon_proc import (
    ROOT,
    DaemonProcess,
    NotifyListener,
    daemon_config,
    run_state,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from selenium.webdriver.remote.webelement import WebElement

    from stemd import RunState

pytestmark = pytest.mark.slow

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
SHOTS = ROOT / "docs" / "images"
WAIT = 20.0
SCHEDULE = """
[[schedules]]
name = "new-year"
workflow = "test.lifecycle"
cron = "0 0 1 1 *"
params = { hold = "b.new-year" }
"""


def _first(paths: tuple[str, ...], what: str) -> str:
    for path in paths:
        if Path(path).exists():
            return path
    found = shutil.which(Path(paths[0]).name)
    if found:
        return found
    raise AssertionError(
        f"{what} is not installed ({', '.join(paths)}): "
        "apt-get install chromium chromium-driver (.ci/run does)"
    )


class Site:
    """The daemon's base URL, its database and a browser."""

    def __init__(self, base: str, db: Path, driver: webdriver.Chrome, work: Path) -> None:
        self.base = base
        self.db = db
        self.driver = driver
        self.work = work

    def api(self, verb: str, body: dict[str, Any]) -> Any:
        reply = http_sync(
            f"{self.base}/api/{verb}",
            "POST",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        assert reply.status_code == 200, reply.text
        return reply.json()

    def start(self, workflow: str, run_id: str, **params: Any) -> str:
        started = self.api("start", {"workflow": workflow, "params": params, "run_id": run_id})
        return str(started["run_id"])

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def until(self, check: Callable[[], Any], what: str) -> Any:
        return WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(
            lambda _: check(), message=f"timed out waiting for {what}"
        )

    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def texts(self, selector: str) -> list[str]:
        """The text of every element matching ``selector``, read at one instant (the live
        updates replace elements between two reads)."""
        script = "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText)"
        return list(self.driver.execute_script(script, selector))

    def live(self) -> None:
        """Wait until the page's event stream is connected."""
        self.until(lambda: self.texts("#live") == ["● live"], "the live stream")

    def stored(self, run_id: str) -> RunState:
        """The run as the store has it."""
        state = run_state(self.db, run_id)
        assert state is not None, f"no run {run_id} in the store"
        return state

    def toast(self) -> str:
        found = self.texts("#toast:not([hidden])")
        return found[0] if found else ""

    def status(self) -> str:
        found = self.texts("#run h1 .status")
        return found[0] if found else ""

    def accept(self) -> None:
        """Accept the confirmation the action asks for."""
        alert = self.until(lambda: _alert(self.driver), "the confirmation")
        alert.accept()

    def shot(self, name: str) -> None:
        if os.environ.get("STEMD_SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(SHOTS / f"dashboard-{name}.png"))


def _alert(driver: webdriver.Chrome) -> Any:
    try:
        return driver.switch_to.alert
    except Exception:
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def site(tmp_path: Path, notify: NotifyListener) -> Iterator[Site]:
    """A daemon serving the test workflows over HTTP, and a headless Chromium."""
    options = webdriver.ChromeOptions()
    options.binary_location = _first(CHROMIUM, "chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    service = Service(executable_path=_first(DRIVER, "chromium-driver (chromedriver)"))
    # The browser first: chromedriver picks a free port of its own as it starts, and took
    # the daemon's once, chosen a moment before (the daemon then failed with "address
    # already in use").
    driver = webdriver.Chrome(options=options, service=service)
    try:
        port = _free_port()
        config = daemon_config(tmp_path, http_address=f"127.0.0.1:{port}")
        with config.open("a") as toml:  # a schedule whose ticks never come during a test
            toml.write(SCHEDULE)
        daemon = DaemonProcess(tmp_path, config, notify)
        try:
            notify.wait_for("READY=1")
            yield Site(f"http://127.0.0.1:{port}", tmp_path / "stemd.db", driver, tmp_path)
        finally:
            daemon.kill()
    finally:
        driver.quit()


def test_runs_list_updates_live_and_a_run_page_follows_its_run(site: Site) -> None:
    """The runs list shows a run started after it was opened, with no reload; a run's page
    shows each checkpoint as the run records it, until it completes."""
    for n in range(3):
        site.start("test.lifecycle", f"done-{n}")
    site.open("/runs")
    site.live()
    site.driver.execute_script("window.__stay = 1")
    site.start("test.lifecycle", "late-arrival", hold="b.late")
    site.until(lambda: "late-arrival" in site.texts("#runs td a"), "the new run in the list")
    assert site.driver.execute_script("return window.__stay") == 1  # no reload
    site.shot("runs")

    effects = site.work / "effects"
    site.start("test.steps", "stepper", n=6, sleep=0.4, file=str(effects))
    site.open("/runs/stepper")
    site.live()
    site.driver.execute_script("window.__stay = 1")
    first = len(site.texts("#timeline li"))
    site.until(lambda: len(site.texts("#timeline li")) > first + 2, "the timeline to grow")
    site.until(lambda: site.status() == "completed", "the run to complete on its page")
    assert site.driver.execute_script("return window.__stay") == 1
    assert site.texts("#result") == ["6"]
    assert sum(1 for t in site.texts("#timeline li") if t.startswith("work")) == 6
    site.shot("run")
    site.open("/")
    assert site.texts("[data-count=completed]") == ["4"]
    site.shot("overview")


def test_approve_a_waiting_run_and_cancel_another_from_the_page(site: Site) -> None:
    """Sending to a waiting run from its page (after the confirmation) resumes it, emitting
    on its topic resumes another, cancelling a third ends it; the pages follow and the
    store agrees."""
    site.start("test.lifecycle", "approve-me", hold="b.approve")
    site.start("test.lifecycle", "emit-me", hold="b.emit")
    site.start("test.lifecycle", "cancel-me", hold="b.cancel")
    site.open("/runs/approve-me")
    site.live()
    site.until(lambda: site.status() == "suspended", "the run to wait")
    site.shot("waiting-run")
    field = site.css("#send-payload")
    field.clear()
    field.send_keys('{"approvedBy": "ana"}')
    site.css("#send-button").click()
    site.accept()
    site.until(lambda: site.status() == "completed", "the approved run to complete")
    state = run_state(site.db, "approve-me")
    assert state is not None
    assert state.status is RunStatus.COMPLETED

    site.open("/runs/emit-me")
    site.live()
    site.css("form[data-action=emit] button").click()
    site.accept()
    site.until(lambda: site.status() == "completed", "the run resumed by the emit")

    site.open("/runs/cancel-me")
    site.live()
    site.css("button[data-action=cancel]").click()
    site.accept()
    site.until(lambda: site.status() == "cancelled", "the cancelled run")
    state = run_state(site.db, "cancel-me")
    assert state is not None
    assert state.status is RunStatus.CANCELLED
    assert state.cancel_reason == "cancelled from the dashboard"


def test_dismissing_the_confirmation_changes_nothing(site: Site) -> None:
    """Cancel, dismissed at the confirmation, leaves the run waiting."""
    site.start("test.lifecycle", "keep-me", hold="b.keep")
    site.open("/runs/keep-me")
    site.live()
    site.css("button[data-action=cancel]").click()
    alert = site.until(lambda: _alert(site.driver), "the confirmation")
    alert.dismiss()
    state = run_state(site.db, "keep-me")
    assert state is not None
    assert state.status is RunStatus.SUSPENDED


def test_pages_are_keyboard_usable_and_fit_a_phone(site: Site) -> None:
    """The first Tab reaches the skip link, which moves focus to the content; every page
    fits a phone's width without scrolling sideways; search by run id opens the run."""
    site.start("test.lifecycle", "phone-run", hold="b.phone")
    site.open("/")
    body = site.css("body")
    body.send_keys(Keys.TAB)
    active = site.driver.switch_to.active_element
    assert active.text == "Skip to content"
    active.send_keys(Keys.ENTER)
    assert site.driver.switch_to.active_element.get_attribute("id") == "main"
    site.driver.set_window_size(390, 844)
    for path in ("/", "/runs", "/runs/phone-run", "/topics", "/workflows", "/schedules"):
        site.open(path)
        wide = site.driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert wide <= 1, f"{path} is {wide}px wider than the phone"
        if path == "/runs/phone-run":
            site.shot("phone-run")
    site.driver.set_window_size(1280, 900)
    site.open("/runs")
    search = site.css("input[name=q]")
    search.send_keys("phone-run", Keys.ENTER)
    site.until(lambda: site.driver.current_url.endswith("/runs/phone-run"), "the run's page")
    site.open("/topics")
    assert "b.phone" in site.texts("td a")
    site.shot("topics")
    site.open("/workflows")
    assert "test.lifecycle" in site.texts("td a")
    site.shot("workflows")


# Holds each EventSource the page makes until ``window.__connect()``: the page is rendered,
# and its stream connects only when the test says.
HOLD_STREAMS = """
(() => {
  const Real = window.EventSource;
  const held = [];
  window.EventSource = function (url) {
    const listeners = [];
    held.push(() => {
      const real = new Real(url);
      for (const [type, fn] of listeners) real.addEventListener(type, fn);
    });
    return { addEventListener: (type, fn) => listeners.push([type, fn]), close() {} };
  };
  window.__connect = () => { for (const go of held.splice(0)) go(); };
})();
"""


def test_a_run_page_shows_what_changed_before_its_stream_connected(site: Site) -> None:
    """A run that moved after its page was rendered and before the page's event stream
    connected is shown as it is once the stream connects."""
    site.start("test.lifecycle", "gap", hold="b.gap")
    site.until(lambda: site.stored("gap").status is RunStatus.SUSPENDED, "the run to wait")
    site.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HOLD_STREAMS})
    site.open("/runs/gap")
    assert site.status() == "suspended"
    site.api("emit", {"topic": "b.gap", "payload": {"ok": True}})
    site.until(lambda: site.stored("gap").status is RunStatus.COMPLETED, "the run to end")
    assert site.status() == "suspended"  # nothing told the page yet
    site.driver.execute_script("window.__connect()")
    site.live()
    assert site.status() == "completed"


def test_pause_and_resume_a_waiting_run_from_its_page(site: Site) -> None:
    """Pause on a waiting run's page (confirmed) pauses it in the store and the page says
    so; an event emitted meanwhile does not move it; Resume lets it take the event and
    complete."""
    site.start("test.lifecycle", "pause-me", hold="b.pause")
    site.open("/runs/pause-me")
    site.live()
    site.until(lambda: site.status() == "suspended", "the run to wait")
    site.css("#pause-button").click()
    site.accept()
    site.until(lambda: site.texts("#run h1 .status-paused") == ["paused"], "the paused badge")
    assert site.stored("pause-me").paused
    site.api("emit", {"topic": "b.pause", "payload": {"ok": True}})  # kept for the paused run
    site.open("/runs?workflow=test.lifecycle")
    assert "paused" in site.texts("tr[data-run=pause-me] td")[2]
    site.open("/runs/pause-me")
    site.live()
    site.shot("paused-run")
    held = site.stored("pause-me")
    assert (held.status, held.paused) == (RunStatus.SUSPENDED, True)
    site.css("#resume-button").click()
    site.accept()
    site.until(lambda: site.status() == "completed", "the resumed run to complete")
    done = site.stored("pause-me")
    assert (done.status, done.paused) == (RunStatus.COMPLETED, False)


def test_pause_the_runs_a_filter_selects_after_a_dry_run_count(site: Site) -> None:
    """On the runs list filtered by topic, Pause these runs asks to confirm with the dry
    run's count, and pauses exactly those runs."""
    for n in range(2):
        site.start("test.lifecycle", f"grp-{n}", hold="b.group")
    site.start("test.lifecycle", "other", hold="b.other")
    for run_id in ("grp-0", "grp-1", "other"):
        site.until(lambda r=run_id: site.stored(r).status is RunStatus.SUSPENDED, "the waits")
    site.open("/runs?topic=b.group")
    site.live()
    site.css("button[data-action=group-pause]").click()
    alert = site.until(lambda: _alert(site.driver), "the confirmation")
    assert alert.text.startswith("Pause 2 runs (topic b.group)")
    alert.accept()
    site.until(lambda: site.toast() == "Paused 2 runs.", "the group paused")
    assert [site.stored(r).paused for r in ("grp-0", "grp-1", "other")] == [True, True, False]


def test_fork_a_run_from_a_step_and_trigger_a_schedule(site: Site) -> None:
    """Fork on a completed run's page (confirmed) opens the new run, which the store has
    from the chosen step; Trigger now on the schedules page starts the schedule's run, and
    Pause marks the schedule paused."""
    site.start("test.lifecycle", "fork-me")
    site.until(lambda: site.stored("fork-me").status is RunStatus.COMPLETED, "the run to end")
    site.open("/runs/fork-me")
    site.live()
    site.css("#fork-step").send_keys("wait")
    site.css("#fork-button").click()
    site.accept()
    site.until(lambda: "/runs/fork-me" not in site.driver.current_url, "the forked run's page")
    forked = site.driver.current_url.rsplit("/", 1)[1]
    site.until(lambda: site.stored(forked).status is RunStatus.COMPLETED, "the fork to end")
    assert [c.name for c in site.stored(forked).timeline][:1] == ["flaky"]

    site.open("/schedules")
    site.live()
    site.css("tr[data-schedule=new-year] button[data-action=trigger_schedule]").click()
    site.accept()
    site.until(lambda: site.toast().startswith("Started run "), "the triggered run")
    run_id = site.toast().removeprefix("Started run ").rstrip(".")
    assert site.stored(run_id).workflow == "test.lifecycle"
    site.until(lambda: run_id in site.texts("#schedules td a"), "the schedule's last run")
    site.css("tr[data-schedule=new-year] button[data-action=pause_schedule]").click()
    site.accept()
    site.until(lambda: "paused" in site.texts("tr[data-schedule=new-year] td"), "paused")
    site.shot("schedules")
