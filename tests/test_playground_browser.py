"""The playground in a real browser: headless Chromium (Debian's chromium + chromium-driver),
driven by selenium, against a live `unmaskd serve` of the embedded model.

The test clicks "Run both" and checks what a person sees once both lanes are done: canvases
filled with text and no mask glyph, NFE and tokens/step shown, one bar per denoising step whose
tooltips add up to the whole canvas. It saves a screenshot in its tmp dir; with
UNMASKD_UPDATE_SCREENSHOT=1 it also overwrites deploy/playground.png, the README's picture.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import start_server
from unmaskd.dllm import EMBEDDED_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SCREENSHOT = ROOT / "deploy" / "playground.png"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CI = os.environ.get("CI", "").lower() == "true"
# The network is closed here: without these Chromium hangs on connections it tries to open.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
MASK = "░"
WAIT_S = 60  # for the page and for both lanes; decoding takes well under a second

try:
    import selenium  # noqa: F401
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
except ImportError:
    missing = ["selenium"]
# In CI .ci/deps.sh and the dev extra install them, so there a missing one is a failure.
pytestmark = pytest.mark.skipif(
    bool(missing) and not CI,
    reason=f"{', '.join(missing)} missing (apt-get install chromium chromium-driver, "
           "pip install selenium; .ci/deps.sh and the dev extra do both)")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    # An explicit driver path: selenium does not go looking for (downloading) one.
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        # The README's picture size; --window-size would count the (invisible) window frame.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 1200, "height": 700, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def embedded_server(tmp_path):
    server = start_server(EMBEDDED_MODEL_DIR, tmp_path)
    yield server
    server.stop(timeout=10)


def lane_text(lane, cls: str) -> str:
    return lane.find_element("css selector", "." + cls).text


def lane_done(lane) -> bool:
    return lane_text(lane, "nfe") != "–" or lane_text(lane, "error") != ""


def lane_state(lane) -> dict:
    text = {cls: lane_text(lane, cls) for cls in ("canvas", "nfe", "tps", "error", "resolved")}
    bars = lane.find_elements("css selector", ".bars div")
    return {**text, "bars": [b.get_attribute("title") for b in bars]}


@pytest.mark.timeout(180)
def test_playground_runs_both_samplers_in_chromium(browser, embedded_server, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(embedded_server.url + "/playground")
    # The sampler lists are in once the page has named the served model.
    wait.until(lambda d: d.find_element("id", "model").text not in ("", "…"))
    lanes = browser.find_elements("css selector", ".lane")
    samplers = [lane.find_element("css selector", ".sampler").get_attribute("value")
                for lane in lanes]
    assert samplers == ["topk_confidence", "learned"]  # the page's lanes, once listed

    browser.find_element("id", "run").click()
    # Done when the button is enabled again; an error in a lane ends the wait early.
    wait.until(lambda d: d.find_element("id", "run").is_enabled()
               and all(lane_done(lane) for lane in lanes))
    browser.save_screenshot(str(tmp_path / "playground.png"))

    canvas = int(browser.find_element("id", "gen").get_attribute("value"))
    for sampler, lane in zip(samplers, lanes):
        state = lane_state(lane)
        assert state["error"] == "", (sampler, state)
        assert state["canvas"].strip() and MASK not in state["canvas"], (sampler, state)
        nfe = int(state["nfe"])
        assert nfe >= 1 and float(state["tps"]) > 0, (sampler, state)
        assert state["resolved"].startswith(sampler), (sampler, state)
        # One bar per denoising step, steps 1..NFE in order, committing the whole canvas.
        steps = [re.fullmatch(r"step (\d+): (\d+) tokens", t) for t in state["bars"]]
        assert all(steps) and len(steps) == nfe, (sampler, state)
        assert [int(m[1]) for m in steps] == list(range(1, nfe + 1)), (sampler, state)
        assert sum(int(m[2]) for m in steps) == canvas, (sampler, state)

    if os.environ.get("UNMASKD_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "playground.png", SHIPPED_SCREENSHOT)
