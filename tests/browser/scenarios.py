"""The console's browser scenarios (tests/t89_console.rs starts the stack and runs one).

Usage: scenarios.py NAME CONTEXT.json. The context holds `url` (the console), `tokens`
(role name -> bearer token), `out` (where the screenshot goes) and what the scenario
needs besides. Each asserts what a person sees; the Rust test asserts what the
coordinator and agents then hold.
"""

import sys

from console import (By, click, main, sign_in, sign_in_here, text, type_into, until,
                     wait_for_test)


def matrix_cell(driver, env, project):
    return text(driver, f'#matrix td[data-env="{env}"][data-project="{project}"]')


def participants(driver):
    """Each participant row's (vote, wave, acknowledged), read in one step (the page
    re-renders as events arrive)."""
    return driver.execute_script("""
        const seen = {};
        for (const row of document.querySelectorAll('#participants tbody tr')) {
          const cell = (c) => row.querySelector(c).textContent.trim();
          seen[row.dataset.project] = [cell('.vote'), cell('.wave'), cell('.ack')];
        }
        return seen;""")


def the_viewer_sees_a_release_appear_live(driver, ctx):
    """A viewer signs in and sees the matrix; a release committed from the CLI appears
    without a reload within 2 s; its page shows votes and waves."""
    sign_in(driver, ctx["url"], ctx["tokens"]["viewer"])
    until("A at 1.0 in the matrix", lambda: "1.0" in matrix_cell(driver, "default", "A"))
    driver.execute_script("window.notReloaded = true")
    wait_for_test("commit R2 from the CLI")
    until("A at 2.0 without a reload",
          lambda: "2.0" in matrix_cell(driver, "default", "A"), timeout=2.0)
    assert driver.execute_script("return window.notReloaded === true"), "the page reloaded"
    assert "2.0" in matrix_cell(driver, "default", "B"), matrix_cell(driver, "default", "B")
    driver.get(ctx["url"] + "#/release/R2")
    until("R2 committed", lambda: "committed" in text(driver, "#release-state"))
    seen = until("R2's participants", lambda: participants(driver))
    # A requires B: B goes live in wave 0, A in wave 1; both voted prepared and acked.
    assert seen == {"A": ["prepared", "1", "yes"], "B": ["prepared", "0", "yes"]}, seen
    assert not driver.find_elements(By.ID, "revert"), "a viewer is offered a revert"
    until("R2's events", lambda: "committed" in text(driver, "#release-events"))


def the_operator_approves_from_the_page(driver, ctx):
    """The creator's page offers no approve button; an operator approves from the page
    and the release commits."""
    release = ctx["release"]
    sign_in(driver, ctx["url"], ctx["tokens"]["creator"])
    driver.get(ctx["url"] + f"#/release/{release}")
    until("the release verifying", lambda: "verifying" in text(driver, "#release-state"))
    until("the approval step triggered", lambda: "triggered" in text(driver, '#steps tr[data-step="approval"]'))
    assert not driver.find_elements(By.ID, "approve"), "the creator is offered approve"
    # Four eyes is for approval only: the creator may still reject (stop 57).
    assert driver.find_elements(By.ID, "reject"), "the creator is not offered reject"
    assert "four eyes" in text(driver, "#actions"), text(driver, "#actions")
    driver.execute_script("sessionStorage.clear()")
    sign_in(driver, ctx["url"], ctx["tokens"]["operator"])
    driver.get(ctx["url"] + f"#/release/{release}")
    click(driver, "the approve button", "#approve")
    type_into(driver, "the confirmation", "#confirm-reason", "looks right")
    click(driver, "the confirm button", "#confirm-ok")
    until("the release committed", lambda: "committed" in text(driver, "#release-state"), timeout=15)
    assert "looks right" in text(driver, '#steps tr[data-step="approval"]'), text(driver, "#steps")


def the_revert_shows_its_plan_first(driver, ctx):
    """Revert from the timeline shows the dry-run plan, then commits the state before."""
    sign_in(driver, ctx["url"], ctx["tokens"]["releaser"])
    driver.get(ctx["url"] + "#/timeline/" + ctx.get("environment", "default"))
    row = '#timeline tr[data-revision="2"]'
    until("checkpoint 2", lambda: text(driver, row))
    assert "R2" in text(driver, row) and "A 1.0 → 2.0" in text(driver, row), text(driver, row)
    click(driver, "checkpoint 2's revert button", row + " button.revert")
    until("the plan", lambda: driver.find_element(By.ID, "plan-changes").is_displayed())
    plan = text(driver, "#plan-changes")
    assert "A" in plan and "2.0" in plan and "1.0" in plan, plan
    assert "Every precondition holds" in text(driver, "#plan-verdict"), text(driver, "#plan-verdict")
    assert text(driver, "#plan-checks"), "no preconditions shown"
    wait_for_test("check that the dry run changed nothing")
    click(driver, "the confirm button", "#confirm-ok")
    until("the revert's page", lambda: "/release/" in driver.current_url)
    until("the revert committed", lambda: "committed" in text(driver, "#release-state"), timeout=15)
    print(f"REVERT {driver.current_url.rsplit('/', 1)[-1]}", flush=True)


def the_page_resumes_after_a_restart(driver, ctx):
    """The coordinator restarts while the events page is open: it says it reconnects,
    then shows every event with no gap and no duplicate."""
    sign_in(driver, ctx["url"], ctx["tokens"]["viewer"])
    driver.get(ctx["url"] + "#/events")
    until("the stream live", lambda: text(driver, "#conn") == "live")
    wait_for_test("restart the coordinator")
    until("the page saying it reconnects", lambda: "reconnecting" in text(driver, "#conn"), timeout=10)
    wait_for_test("start it again and release R3")
    until("the stream live again", lambda: text(driver, "#conn") == "live", timeout=15)
    until("R3's commit", lambda: "R3" in text(driver, "#events"), timeout=10)
    last = int(wait_for_test("say the log's last sequence number"))
    until(f"event {last}", lambda: driver.find_elements(By.CSS_SELECTOR, f'#events tr[data-seq="{last}"]'), timeout=10)
    # One script reads every row at once, so a live update cannot replace rows mid-read.
    seqs = driver.execute_script("return [...document.querySelectorAll('#events tbody tr')].map(r => +r.dataset.seq)")
    assert seqs == list(range(last, 0, -1)), f"events shown (newest first): {seqs}"


def the_console_follows_again_after_a_new_sign_in(driver, ctx):
    """The token is revoked while the console is open: it asks to sign in again, and
    once signed in with another token it follows the log live again, without a reload
    (stop 57: it stopped following for good)."""
    sign_in(driver, ctx["url"], ctx["tokens"]["first"])
    until("the stream live", lambda: text(driver, "#conn") == "live")
    driver.execute_script("window.notReloaded = true")
    wait_for_test("revoke the first token")
    until("the sign-in form", lambda: driver.find_elements(By.ID, "signin"), timeout=15)
    sign_in_here(driver, ctx["tokens"]["second"])
    wait_for_test("commit R2 from the CLI")
    until("A at 2.0 without a reload",
          lambda: "2.0" in matrix_cell(driver, "default", "A"), timeout=5.0)
    assert driver.execute_script("return window.notReloaded === true"), "the page reloaded"
    until("the stream live again", lambda: text(driver, "#conn") == "live")


def the_release_page_follows_its_release_across_a_restart(driver, ctx):
    """A release's page is open while the coordinator restarts and the release is
    approved after it: the page's events show its commit, without a reload (stop 57:
    the page's own stream was never reconnected)."""
    release = ctx["release"]
    sign_in(driver, ctx["url"], ctx["tokens"]["viewer"])
    driver.get(ctx["url"] + f"#/release/{release}")
    until("the approval step triggered", lambda: "triggered" in text(driver, '#steps tr[data-step="approval"]'))
    until("its events", lambda: text(driver, "#release-events"))
    assert "committed" not in text(driver, "#release-events"), text(driver, "#release-events")
    driver.execute_script("window.notReloaded = true")
    wait_for_test("restart the coordinator")
    until("the page saying it reconnects", lambda: "reconnecting" in text(driver, "#conn"), timeout=10)
    wait_for_test("start it again and approve the release")
    until("the release committed", lambda: "committed" in text(driver, "#release-state"), timeout=15)
    until("the commit in its events", lambda: "committed" in text(driver, "#release-events"), timeout=10)
    assert driver.execute_script("return window.notReloaded === true"), "the page reloaded"


main({f.__name__: f for f in [
    the_console_follows_again_after_a_new_sign_in,
    the_release_page_follows_its_release_across_a_restart,
    the_viewer_sees_a_release_appear_live,
    the_operator_approves_from_the_page,
    the_revert_shows_its_plan_first,
    the_page_resumes_after_a_restart,
]})
