"""Drives the Lockstep console in Debian's headless Chromium through Selenium, for the
browser tests (tests/t89_console.rs) and the README's screenshots.

The Rust test starts the real stack and runs one scenario of scenarios.py with a JSON
context (URLs, tokens, the output directory). A scenario that needs the test to act
in the middle (commit a release from the CLI, restart the coordinator) prints
`WAIT <what>` and reads one line from stdin before it goes on; its assertions fail the
process, and every scenario saves a screenshot of its final page.
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = os.environ.get("LOCKSTEP_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("LOCKSTEP_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser(width=1280, height=900):
    """A headless Chromium that accepts the test deployment's own CA's certificates."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-gpu"):
        options.add_argument(arg)
    options.accept_insecure_certs = True
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def until(what, check, timeout=10.0):
    """Polls `check` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def text(driver, css):
    """The text of the first element matching `css` ("" when there is none). A live
    update may replace the element between finding and reading it: read it again."""
    for _ in range(50):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            time.sleep(0.02)
    raise AssertionError(f"{css} kept being replaced while read")


def click(driver, what, css, timeout=10.0):
    """Finds `css` and clicks it as one step, again if a live update replaced it first."""
    until(what, lambda: driver.find_element(By.CSS_SELECTOR, css).click() or True, timeout)


def type_into(driver, what, css, keys):
    """Finds `css` and types `keys` into it as one step (see `click`)."""
    until(what, lambda: driver.find_element(By.CSS_SELECTOR, css).send_keys(keys) or True)


def sign_in(driver, url, token):
    """Opens the console and signs in with `token`; returns when the overview shows."""
    driver.get(url)
    sign_in_here(driver, token)


def sign_in_here(driver, token):
    """Signs in with `token` on the sign-in form the page shows, without loading it
    again; returns when the overview shows."""
    type_into(driver, "the sign-in form", "#token", token)
    click(driver, "the sign-in button", "#signin button[type=submit]")
    until("the overview matrix", lambda: driver.find_elements(By.ID, "matrix"))


def wait_for_test(what):
    """Asks the Rust test to do `what` and waits until it says it has."""
    print(f"WAIT {what}", flush=True)
    line = sys.stdin.readline()
    if not line:
        raise AssertionError(f"the test went away while asked to {what}")
    return line.strip()


def main(scenarios):
    """Runs the scenario named in argv[1] with the context file argv[2]."""
    name, context = sys.argv[1], json.load(open(sys.argv[2]))
    driver = browser(*context.get("window", (1280, 900)))
    try:
        scenarios[name](driver, context)
    finally:
        os.makedirs(context["out"], exist_ok=True)
        driver.save_screenshot(os.path.join(context["out"], f"{name}.png"))
        driver.quit()
    print("OK", flush=True)
