#!/usr/bin/env python3
"""Drive Debian's chromium (through chromium-driver and Python's selenium) against a running
`run-chain serve`, for tests/console_browser.rs. Each scenario checks what a person would see
and prints one JSON line of what it found; it exits 1 with a message when a check fails.

Usage: console_browser.py SCENARIO BASE_URL SHOTS_DIR [ARGS...]
  live    CHAIN TASK        the running task's output grows on /chain/C and /run/... with no reload
  hostile CHAIN TASK ID LIVE_CHAIN GO_FILE
                            a hostile run's page, and LIVE_CHAIN's live tail (its task prints
                            once GO_FILE exists): no script runs, no element is injected
  kick    CHAIN             the kick button, its confirmation page, back on the chain's page
  runnow  CHAIN TASK JS GO_FILE
                            the Run now button of TASK on /chain/C, its confirmation page, and
                            the run's page it lands on; with JS (JS=1) the run is queued behind
                            a task that holds until GO_FILE exists, and the page turns into the
                            finished run with no reload; with JS off (JS=0) it is reloaded until
                            the run has ended
  nojs    CHAIN TASK ID     every page with JavaScript off: all is there
  pages   CHAIN TASK ID     a screenshot of each page

Waits are conditions with deadlines (WebDriverWait), never sleeps.
"""
import json
import os
import urllib.request
import sys
import tempfile
import shutil

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

DEADLINE = 30


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def browser(js=True):
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("RUN_CHAIN_CHROMIUM", "/usr/bin/chromium")
    profile = tempfile.mkdtemp(prefix="run-chain-chromium-")
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ]:
        opts.add_argument(arg)
    if not js:
        opts.add_argument("--blink-settings=scriptEnabled=false")
    service = Service(executable_path=os.environ.get("RUN_CHAIN_CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(DEADLINE)
    return d, profile


def wait(d, what, cond):
    try:
        return WebDriverWait(d, DEADLINE, poll_frequency=0.1).until(lambda d: cond(d))
    except TimeoutException:
        raise Failed(f"timed out after {DEADLINE}s waiting until {what}")


def api(url):
    with urllib.request.urlopen(url + "?from=0", timeout=DEADLINE) as r:
        return json.load(r)


def shot(d, shots, name):
    os.makedirs(shots, exist_ok=True)
    d.save_screenshot(os.path.join(shots, name + ".png"))


def output_text(d):
    return d.execute_script("var p = document.getElementById('output'); return p ? p.textContent : null;")


def no_injection(d, where):
    """No script ran, no element was injected."""
    try:
        text = d.switch_to.alert.text
        raise Failed(f"{where}: an alert is open: {text!r}")
    except NoAlertPresentException:
        pass
    check(d.execute_script("return window.__pwned === undefined;"), f"{where}: the payload ran (window.__pwned set)")
    scripts = d.execute_script("return Array.from(document.scripts).map(s => s.src);")
    check(len(scripts) == 1 and scripts[0].endswith("/static/console.js"), f"{where}: scripts {scripts}")
    check(d.execute_script("return document.images.length;") == 0, f"{where}: an <img> is on the page")
    check(
        d.execute_script("return document.querySelectorAll('a[href*=\"evil\"], [onerror], [onmouseover]').length;") == 0,
        f"{where}: an injected link or handler",
    )
    check(d.execute_script("return document.querySelectorAll('pre').length;") == 1, f"{where}: the <pre> was closed early")


def live(base, shots, chain, task):
    d, profile = browser()
    try:
        d.get(f"{base}/chain/{chain}")
        wait(d, "the live tail shows", lambda d: (output_text(d) or "").count("\n") >= 1)
        wait(d, "the pause button is there", lambda d: d.find_elements(By.ID, "pause"))
        d.execute_script("window.__marker = 'no reload';")
        before = len(output_text(d))
        wait(d, "the output grows on the chain's page", lambda d: len(output_text(d) or "") >= before + 20)
        check(d.execute_script("return window.__marker;") == "no reload", "the chain's page was reloaded")
        lines = output_text(d).splitlines()
        check(lines == [f"line {i}" for i in range(len(lines))], f"lines lost or repeated: {lines}")
        shot(d, shots, "chain")
        # Paused, the page fetches nothing more while the run goes on (for longer than the
        # 2 s between two refreshes); resumed, it goes on from where it was.
        src = d.execute_script("return document.getElementById('output').getAttribute('data-src');")
        run_id = src.split("/").pop()
        d.find_element(By.ID, "pause").click()
        check(d.find_element(By.ID, "pause").text == "Resume updates", "the pause button does not say it is paused")
        offset = lambda d: int(d.execute_script("return document.getElementById('output').getAttribute('data-offset');"))
        server = lambda: api(base + src)["output_to"]
        at_click = offset(d)
        wait(d, "the run writes on after the pause", lambda d: server() > at_click + 64)
        paused = offset(d)  # any fetch under way at the click has ended by now
        wait(d, "the run writes 3 s more", lambda d: server() > paused + 120)
        check(offset(d) == paused, f"the paused page went on fetching ({paused} -> {offset(d)})")
        d.find_element(By.ID, "pause").click()
        wait(d, "the resumed page catches up", lambda d: offset(d) > paused)
        lines = output_text(d).splitlines()
        check(lines == [f"line {i}" for i in range(len(lines))], f"lines lost or repeated after the pause: {lines}")
        d.get(f"{base}/run/{chain}/{task}/{run_id}")
        d.execute_script("window.__marker = 'no reload';")
        before = len(output_text(d))
        wait(d, "the output grows on the run's page", lambda d: len(output_text(d) or "") >= before + 20)
        check(d.execute_script("return window.__marker;") == "no reload", "the run's page was reloaded")
        lines = output_text(d).splitlines()
        check(lines == [f"line {i}" for i in range(len(lines))], f"lines lost or repeated on the run page: {lines[:5]}...")
        shot(d, shots, "run-live")
        print(json.dumps({"run_id": int(run_id), "paused_at": paused, "lines": len(lines)}))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def hostile(base, shots, chain, task, run_id, live_chain, go_file):
    d, profile = browser()
    try:
        d.get(f"{base}/run/{chain}/{task}/{run_id}")
        no_injection(d, "the hostile run's page")
        text = output_text(d)
        check("</pre><script>window.__pwned=1</script>" in text, f"the payload is not shown literally: {text!r}")
        check('<img src=x onerror="window.__pwned=2">' in text, f"the img is not shown literally: {text!r}")
        check("\x1b" not in text and "\x00" not in text and "evil.example" not in text, f"escape sequences left: {text!r}")
        shot(d, shots, "hostile-run")
        # The live path: the page is open before the task prints; then it prints the payload
        # bit by bit, and the script adds it to the page.
        d.get(f"{base}/chain/{live_chain}")
        wait(d, "the live tail is there", lambda d: output_text(d) is not None)
        check("END-OF-PAYLOAD" not in output_text(d), "the payload was printed before the page was open")
        open(go_file, "w").close()
        wait(d, "the live tail has the whole payload", lambda d: "END-OF-PAYLOAD" in (output_text(d) or ""))
        no_injection(d, "the chain's live tail")
        text = output_text(d)
        check("</pre><script>window.__pwned=1</script>" in text, f"the live payload is not literal: {text!r}")
        check('<img src=x onerror="window.__pwned=2">' in text, f"the live img is not literal: {text!r}")
        check("\x1b" not in text and "\x00" not in text and "evil.example" not in text, f"escape sequences in the live tail: {text!r}")
        shot(d, shots, "hostile-live")
        print(json.dumps({"ok": True}))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def kick(base, shots, chain):
    d, profile = browser()
    try:
        d.get(f"{base}/chain/{chain}")
        d.find_element(By.LINK_TEXT, "Kick (end the cooldown)").click()
        wait(d, "the confirmation page", lambda d: d.current_url.endswith(f"/chain/{chain}/kick/confirm"))
        shot(d, shots, "confirm-kick")
        d.find_element(By.CSS_SELECTOR, "form.confirm button[type=submit]").click()
        wait(d, "back on the chain's page", lambda d: d.current_url == f"{base}/chain/{chain}")
        print(json.dumps({"url": d.current_url}))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def outcome_shown(d):
    """The outcome the run page shows (the class o-OUTCOME of its badge)."""
    return d.execute_script(
        "var b = document.querySelector('#fields .outcome'); if (!b) return null;"
        " var c = Array.from(b.classList).find(c => c.startsWith('o-')); return c ? c.slice(2) : null;"
    )


def runnow(base, shots, chain, task, js, go_file):
    js = js == "1"
    d, profile = browser(js=js)
    try:
        d.get(f"{base}/chain/{chain}")
        d.find_element(By.CSS_SELECTOR, f"a[href='/chain/{chain}/task/{task}/run/confirm']").click()
        wait(d, "the confirmation page", lambda d: d.current_url == f"{base}/chain/{chain}/task/{task}/run/confirm")
        wait(d, "the run-now confirmation's heading",
             lambda d: f"Run {task} of chain {chain} now?" in d.execute_script(
                 "var h = document.querySelector('h1'); return h ? h.textContent : '';"))
        shot(d, shots, "confirm-run-now" + ("" if js else "-nojs"))
        d.find_element(By.CSS_SELECTOR, "form.confirm button[type=submit]").click()
        prefix = f"{base}/run/{chain}/{task}/"
        wait(d, "on the run's page", lambda d: d.current_url.startswith(prefix) and d.current_url[len(prefix):].isdigit())
        run_id = int(d.current_url[len(prefix):])
        # The URL is the run page's as soon as the navigation commits, before its document has
        # loaded: wait for the outcome badge itself.
        wait(d, "the run's outcome on its page", lambda d: outcome_shown(d) is not None)
        first = outcome_shown(d)
        check(first in ("queued", "running", "ok"), f"the run's page shows {first!r}")
        text = d.find_element(By.ID, "fields").text
        check("manual" in text and "web 127.0.0.1:" in text, f"the trigger or who asked is not shown: {text!r}")
        if js:
            check(first == "queued", f"the run is not queued behind the held task: {first!r}")
            check("Queued" in text, f"the page does not say queued: {text!r}")
            shot(d, shots, "run-queued")
            d.execute_script("window.__marker = 'no reload';")
            open(go_file, "w").close()
            wait(d, "the page shows the run done", lambda d: outcome_shown(d) == "ok")
            wait(d, "the page shows its output", lambda d: f"{task} says hello" in (output_text(d) or ""))
            check(d.execute_script("return window.__marker;") == "no reload", "the run's page was reloaded")
            shot(d, shots, "run-now-done")
        else:
            check(not d.find_elements(By.ID, "pause"), "the script ran: JavaScript is not off")

            def done(d):
                if outcome_shown(d) == "ok":
                    return True
                d.refresh()
                return False

            wait(d, "the reloaded page shows the run done", done)
            check(f"{task} says hello" in (output_text(d) or ""), f"no output: {output_text(d)!r}")
        print(json.dumps({"run_id": run_id, "first": first}))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def nojs(base, shots, chain, task, run_id):
    d, profile = browser(js=False)
    try:
        d.get(f"{base}/")
        check(not d.find_elements(By.ID, "pause"), "the script ran: JavaScript is not off")
        check(d.find_elements(By.CSS_SELECTOR, f"a[href='/chain/{chain}']"), "no link to the chain on /")
        check("up" in d.find_element(By.CSS_SELECTOR, f"tr[data-chain='{chain}']").text, "the chain is not shown up")
        shot(d, shots, "index-nojs")
        d.get(f"{base}/chain/{chain}")
        check(d.find_elements(By.CSS_SELECTOR, f"a[href='/chain/{chain}/task/{task}']"), "no task on the chain's page")
        check("line 0" in (output_text(d) or ""), "no output on the chain's page")
        shot(d, shots, "chain-nojs")
        d.get(f"{base}/chain/{chain}/task/{task}")
        check(d.find_elements(By.CSS_SELECTOR, "table.runs"), "no history on the task's page")
        check(d.find_elements(By.CSS_SELECTOR, "figure.chart svg") or "No finished run" in d.page_source, "no chart")
        shot(d, shots, "task-nojs")
        d.get(f"{base}/run/{chain}/{task}/{run_id}")
        check("line 0" in (output_text(d) or ""), "no output on the run's page")
        shot(d, shots, "run-nojs")
        print(json.dumps({"ok": True}))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def pages(base, shots, chain, task, run_id):
    d, profile = browser()
    try:
        for name, path in [
            ("index", "/"),
            ("chain-page", f"/chain/{chain}"),
            ("task", f"/chain/{chain}/task/{task}"),
            ("run", f"/run/{chain}/{task}/{run_id}"),
            ("confirm-stop", f"/chain/{chain}/stop/confirm"),
        ]:
            d.get(base + path)
            check(d.find_elements(By.TAG_NAME, "h1"), f"{path}: no heading")
            shot(d, shots, name)
        print(json.dumps({"ok": True}))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 64
    scenario, base, shots, args = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3], sys.argv[4:]
    fn = {"live": live, "hostile": hostile, "kick": kick, "runnow": runnow, "nojs": nojs, "pages": pages}.get(scenario)
    if fn is None:
        print(f"no scenario {scenario!r}", file=sys.stderr)
        return 64
    try:
        fn(base, shots, *args)
    except Failed as e:
        print(f"console_browser.py {scenario}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
