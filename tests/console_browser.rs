//! The web console in a real browser: Debian's chromium, driven by chromium-driver through
//! Python's selenium (`tests/console_browser.py`, which scripts/test installs with them),
//! against the real binary, real chains and a real store. A missing browser fails the test:
//! it is never skipped. Screenshots of each page go to TARGET/console-screenshots/.

mod common;
mod console_support;

use common::*;
use console_support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
[tasks.slow]
command = 'i=0; while [ $i -lt 600 ]; do echo "line $i"; i=$((i+1)); sleep 0.2; done'
[tasks.quick]
command = 'echo quick >> "$T/quick"'
[tasks.hostile]
command = 'printf "</pre><script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">\033[31mred\033[0m \033]8;;http://evil.example/\033\\link\033]8;;\033\\ bad:\377\376 nul:\000 end\n"'
[tasks.hostile_slow]
command = 'while [ ! -e "$T/go" ]; do sleep 0.05; done; printf "</pre><scr"; sleep 0.4; printf "ipt>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">\033[3"; sleep 0.4; printf "1mred\033]8;;http://evil.example/\033\\link\033]8;;\033\\ \377 nul:\000 END-OF-PAYLOAD\n"; sleep 120'
"#;

/// Where the screenshots go: beside cargo's tmp dir for tests, in the target directory.
fn shots_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("console-screenshots")
}

/// The browser and its driver are there (scripts/test installs them); else the test fails.
fn require_browser() {
    for f in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(f).exists() || std::env::var_os("RUN_CHAIN_CHROMIUM").is_some(),
            "{f} is missing: scripts/test installs Debian's chromium and chromium-driver"
        );
    }
    let ok = Command::new("python3")
        .args(["-c", "import selenium"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import selenium: scripts/test installs it (pip)"
    );
}

/// Runs a scenario of tests/console_browser.py; returns its JSON line, or fails the test
/// with what it said.
fn browse(env: &TestEnv, scenario: &str, base: &str, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console_browser.py");
    let shots = shots_dir();
    let mut cmd = env.command_for("python3");
    cmd.arg(script)
        .arg(scenario)
        .arg(base)
        .arg(&shots)
        .args(args)
        .env("SE_OFFLINE", "true");
    let done = env.finish_command(cmd);
    assert_eq!(
        done.code(),
        Some(0),
        "console_browser.py {scenario} failed:\nstdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
    let line = done.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {}", done.stdout))
}

/// A running task's output grows on the chain's and the run's pages without a reload (and
/// stops while paused); with JavaScript off every page still shows it all; a screenshot of
/// each page.
#[test]
fn live_output_grows_without_a_reload_and_every_page_works_without_js() {
    require_browser();
    let env = TestEnv::new(CONFIG);
    let mut chain = env.spawn(&["slow", "quick"]);
    env.wait_running(&mut chain, "slow_quick");
    env.wait_chain_status("slow_quick", "slow runs", |c| c["now"]["task"] == "slow");
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-actions"]);
    let base = format!("http://{addr}");
    wait_until("the first line is in the store", || {
        get(addr, "/api/v1/runs/slow_quick/slow/1").json()["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("line 0"))
    });
    let found = browse(&env, "live", &base, &["slow_quick", "slow"]);
    assert_eq!(found["run_id"], 1);
    browse(&env, "nojs", &base, &["slow_quick", "slow", "1"]);
    browse(&env, "pages", &base, &["slow_quick", "slow", "1"]);
    for shot in [
        "index",
        "chain-page",
        "task",
        "run",
        "confirm-stop",
        "chain",
        "run-live",
    ] {
        let p = shots_dir().join(format!("{shot}.png"));
        assert!(
            p.metadata().is_ok_and(|m| m.len() > 1000),
            "{} missing",
            p.display()
        );
    }
}

/// Hostile output, on a finished run's page and in a running task's live tail: no script
/// runs, no element is injected, the text shows literally.
#[test]
fn hostile_output_runs_no_script_in_the_page_or_the_live_tail() {
    require_browser();
    let env = TestEnv::new(CONFIG);
    env.run(&["--once", "hostile"]).assert_code(0);
    let mut chain = env.spawn(&["--name", "hl", "hostile_slow"]);
    env.wait_running(&mut chain, "hl");
    env.wait_chain_status("hl", "hostile_slow runs", |c| {
        c["now"]["task"] == "hostile_slow"
    });
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &[]);
    let go = env.path("go").display().to_string();
    browse(
        &env,
        "hostile",
        &format!("http://{addr}"),
        &["hostile", "hostile", "1", "hl", &go],
    );
}

/// The kick button, its confirmation form (no JS needed), and back on the chain's page: the
/// task that was cooling down for an hour runs again.
#[test]
fn a_kick_from_the_page_ends_the_cooldown() {
    require_browser();
    let env = TestEnv::new(CONFIG);
    let mut chain = env.spawn(&["--name", "q", "quick"]);
    env.wait_running(&mut chain, "q");
    env.wait_lines("quick", 1);
    env.wait_chain_status("q", "q cools down", |c| c["now"]["state"] == "cooldown");
    let (serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-actions"]);
    let found = browse(&env, "kick", &format!("http://{addr}"), &["q"]);
    assert_eq!(found["url"], format!("http://{addr}/chain/q"));
    env.wait_lines("quick", 2);
    assert!(serve
        .stderr()
        .contains("console: kick of chain q asked by 127.0.0.1:"));
}

/// Run now from the chain's page (issue 19): the button, its confirmation form, and the
/// run's page it lands on. With JS: the run is queued behind a task that holds the chain;
/// once that ends, the page turns into the finished run and its output, with no reload.
/// With JS off: the same path works by the form alone, and the page, reloaded, shows the
/// run done.
#[test]
fn run_now_from_the_page_lands_on_the_run_which_completes_with_and_without_js() {
    require_browser();
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; while [ ! -e "$T/go" ]; do sleep 0.02; done; echo "a says hello"'
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"; echo "b says hello"'
"#,
    );
    let mut chain = env.spawn(&["--name", "ab", "a", "b"]);
    env.wait_running(&mut chain, "ab");
    env.wait_chain_status("ab", "a runs", |c| c["now"]["task"] == "a");
    let (serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-actions"]);
    let base = format!("http://{addr}");
    let go = env.path("go").display().to_string();
    // b, asked while a holds the chain: queued, then run once a ends.
    let found = browse(&env, "runnow", &base, &["ab", "b", "1", &go]);
    assert_eq!(found["first"], "queued", "{found}");
    let id = found["run_id"].as_u64().unwrap_or(0);
    let run = get(addr, &format!("/api/v1/runs/ab/b/{id}")).json();
    assert_eq!(run["run"]["trigger"], "manual", "{run:#}");
    assert!(serve
        .stderr()
        .contains("console: run-now of b in chain ab asked by 127.0.0.1:"));
    // a, asked in b's cooldown with JS off: runs at once.
    env.wait_chain_status("ab", "ab cools down", |c| c["now"]["state"] == "cooldown");
    let found = browse(&env, "runnow", &base, &["ab", "a", "0", &go]);
    let id = found["run_id"].as_u64().unwrap_or(0);
    let run = get(addr, &format!("/api/v1/runs/ab/a/{id}")).json();
    assert_eq!(run["run"]["trigger"], "manual", "{run:#}");
    assert_eq!(run["output"], "a says hello\n", "{run:#}");
    assert_eq!(env.lines("out"), ["a 1", "b 1", "a 2"]);
    for shot in [
        "confirm-run-now",
        "run-queued",
        "run-now-done",
        "confirm-run-now-nojs",
    ] {
        let p = shots_dir().join(format!("{shot}.png"));
        assert!(
            p.metadata().is_ok_and(|m| m.len() > 1000),
            "{} missing",
            p.display()
        );
    }
    env.assert_running(&mut chain, "ab");
}
