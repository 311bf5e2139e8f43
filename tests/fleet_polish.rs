//! Rough edges of the fleet mode that a new user met (session 12, `polish`), each against
//! the real binary and the suite's PostgreSQL (tests/support/pg.rs): "hosts" are
//! RUN_ROOTs with their own config (`host = "h1"`, ...) sharing one database.
//!
//! Cases: `kick`/`stop`/`run-now` with a wrong password exit 78 (a refusal is a config
//! error), as `status` does with a password in the URL; `check` warns once for the tasks on
//! the built-in kill_grace; `--once` says what it does when the database cannot be reached;
//! no `runs.db` appears in a fleet host's RUN_ROOT; the console shows a chain running on
//! another host as running there, and the fleet's host name; messages; `status` of a host
//! that does not own a chain shows the fleet's figures; `stop` on a standby's host names
//! the standby's PID.

mod common;
mod console_support;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use common::{Runner, TestEnv};
use support::pg::Pg;

/// A "host" on `pg` with runchain's password (tests/support/fleet.rs's `host_env`, lease 2 s)
/// and `extra` TOML (tasks, defaults).
fn host(pg: &Pg, name: &str, url: &str, extra: &str) -> TestEnv {
    fleet::host_env(pg, name, url, "2s", extra)
}

/// A "host" whose password file holds `password` (None: no password file at all), lease 2 s,
/// and `extra` TOML (tasks, defaults).
fn host_pw(name: &str, url: &str, password: Option<&str>, extra: &str) -> TestEnv {
    let env = TestEnv::new("");
    let pw = match password {
        Some(p) => format!(
            "password_file = \"{}\"",
            Pg::write_password_file(&env.path("pw"), p).display()
        ),
        None => String::new(),
    };
    env.write_config(&format!(
        r#"
[store]
url = "{url}"
{pw}
lease = "2s"
host = "{name}"
{extra}
"#
    ));
    env
}

/// The tasks of most cases: `work` (a short echo), quick cooldowns, a kill_grace that
/// fits the lease.
const WORK: &str = r#"
[defaults]
success_cooldown = "200ms"
fail_cooldown = "200ms"
stop_grace = "0s"
kill_grace = "200ms"

[tasks.work]
command = "echo work"
"#;

/// The tasks of the cases with an owner and a standby: `work`, cooling down for an hour.
const LONG_WORK: &str =
    "[defaults]\nsuccess_cooldown = \"1h\"\nkill_grace = \"200ms\"\n[tasks.work]\ncommand = \"echo work\"\n";

/// Spawns `work` on h1 until it owns the chain, then on h2 until it waits as its standby.
fn owner_and_standby(h1: &TestEnv, h2: &TestEnv) -> (Runner, Runner) {
    let mut r1 = h1.spawn(&["work"]);
    fleet::wait_stderr(&mut r1, "h1 owns work", "fleet: owner (epoch ");
    let mut r2 = h2.spawn(&["work"]);
    fleet::wait_stderr(
        &mut r2,
        "h2 waits as standby",
        "fleet: standby: the chain runs on host h1",
    );
    (r1, r2)
}

/// Case 1: `kick`, `stop` and `run-now` on a host that runs no instance of the chain, with a
/// password the database refuses: 78 (a config error, as a launch or `status` gives), not
/// 75 ("try again later").
#[test]
fn kick_stop_run_now_with_a_wrong_password_exit_78() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("polish_wrong_pw");
    let h = host_pw("h1", &url, Some("not-the-password"), WORK);
    for args in [
        &["kick", "work"][..],
        &["stop", "work"][..],
        &["run-now", "work", "work"][..],
    ] {
        let out = h.sub(args);
        assert_eq!(
            out.code(),
            Some(78),
            "{args:?}: stdout {} stderr {}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr.contains("password authentication failed"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// Case 2: `status` with a password inside the `[store]` URL: the config does not load, so
/// the fleet was not read; it shows this host's chains, says so, and exits 78 (as `check`
/// and a launch do), not 0 as if the picture were whole.
#[test]
fn status_with_a_password_in_the_url_exits_78() {
    let pg = Pg::shared();
    let (db, _url) = pg.fresh_database("polish_url_pw");
    let url = pg.url("runchain:hunter2", "127.0.0.1", &db);
    let h = host_pw("h1", &url, None, WORK);
    let out = h.sub(&["status"]);
    assert_eq!(
        out.code(),
        Some(78),
        "stdout {} stderr {}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("the fleet's store was not read")
            && out.stderr.contains("showing this host's chains only"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    let out = h.sub(&["status", "--json"]);
    assert_eq!(out.code(), Some(78), "{}", out.stderr);
}

/// Case 4: `check` with the README's `[store]` (default lease 10 s) and tasks on the
/// built-in kill_grace (5 s > 0.2 × 10 s): one line for those tasks together, and one per
/// task whose kill_grace was set (in the task or in `[defaults]`) too long.
#[test]
fn check_warns_once_for_the_tasks_on_the_default_kill_grace() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("polish_check_grace");
    let env = TestEnv::new("");
    let pw = pg.write_runchain_password(&env.path("pw"));
    let tasks = "[tasks.a]\ncommand = \"true\"\n[tasks.b]\ncommand = \"true\"\n[tasks.c]\ncommand = \"true\"\n\
                 [tasks.d]\ncommand = \"true\"\nkill_grace = \"3s\"\n[tasks.e]\ncommand = \"true\"\nkill_grace = \"1s\"\n";
    env.write_config(&format!(
        "[store]\nurl = \"{url}\"\npassword_file = \"{}\"\n{tasks}",
        pw.display()
    ));
    let out = env.sub(&["check"]);
    out.assert_code(0);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "3 tasks use the default kill_grace 5s, more than 0.2 × store.lease = 2s: when the fence stops a task it gets 2s"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("tasks.d.kill_grace = 3s exceeds 0.2 × store.lease (2s)"),
        "{}",
        out.stderr
    );
    // Set in [defaults]: a line per task (it was chosen, each task is named).
    env.write_config(&format!(
        "[store]\nurl = \"{url}\"\npassword_file = \"{}\"\n[defaults]\nkill_grace = \"4s\"\n{tasks}",
        pw.display()
    ));
    let out = env.sub(&["check"]);
    out.assert_code(0);
    for t in ["a", "b", "c"] {
        assert!(
            out.stderr
                .contains(&format!("tasks.{t}.kill_grace = 4s exceeds")),
            "{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("default kill_grace"), "{}", out.stderr);
}

/// Case 5: `--once` (and `--no-kill-concurrent`) with the database unreachable says what it
/// does (gives up after one lease), not that it waits as a standby; a plain launch still
/// waits as standby and says so.
#[test]
fn once_with_the_database_unreachable_says_it_gives_up() {
    let port = support::pg::free_port();
    let url = format!("postgresql://runchain@127.0.0.1:{port}/nowhere");
    let h = host_pw("h1", &url, Some("pw"), WORK);
    for flag in ["--once", "--no-kill-concurrent"] {
        let out = h.run(&[flag, "work"]);
        assert_eq!(out.code(), Some(75), "{flag}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("give up unless it answers within one lease (2s)")
                && !out.stderr.contains("waiting as standby"),
            "{flag}: {}",
            out.stderr
        );
    }
    let mut r = h.spawn(&["work"]);
    let e = r.stderr.clone();
    r.wait_for("a plain launch waits as standby", || {
        std::fs::read_to_string(&e)
            .unwrap_or_default()
            .contains("cannot reach the database")
            && std::fs::read_to_string(&e)
                .unwrap_or_default()
                .contains("waiting as standby and trying again")
    });
}

/// Case 9: no command of a fleet host opens SQLite in its RUN_ROOT: after a run, `status`,
/// `history`, `log`, `metrics`, `check`, `kick`, `stop`, `run-now`, `store import` and the
/// console, RUN_ROOT holds no `runs.db`.
#[test]
fn no_runs_db_appears_in_a_fleet_hosts_run_root() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("polish_no_sqlite");
    let h = host(pg, "h1", &url, WORK);
    let runs_db = h.run_root.join("runs.db");
    let check = |what: &str| {
        assert!(
            !runs_db.exists(),
            "{what} left {} in a fleet host's RUN_ROOT",
            runs_db.display()
        );
    };
    h.run(&["--once", "work"]).assert_code(0);
    check("a --once launch");
    for args in [
        &["status"][..],
        &["status", "--json"][..],
        &["history", "work"][..],
        &["log", "work"][..],
        &["metrics"][..],
        &["check"][..],
        &["kick", "work"][..],
        &["stop", "work"][..],
        &["run-now", "work", "work"][..],
        &["store", "import", "/nonexistent/runs.db"][..],
    ] {
        let _ = h.sub(args);
        check(&format!("{args:?}"));
    }
    let (serve, addr) = console_support::start_serve(&h, "127.0.0.1", &[]);
    for path in [
        "/",
        "/chain/work",
        "/chain/work/task/work",
        "/metrics",
        "/api/v1/status",
    ] {
        let _ = console_support::get(addr, path);
        check(&format!("serve: GET {path}"));
    }
    drop(serve);
    // A running chain: its run and the readers while it runs.
    let mut r = h.spawn(&["work"]);
    let e = r.stderr.clone();
    r.wait_for("h1 owns work", || {
        std::fs::read_to_string(&e)
            .unwrap_or_default()
            .contains("fleet: owner (epoch ")
    });
    for args in [
        &["status"][..],
        &["history", "work"][..],
        &["kick", "work"][..],
    ] {
        let _ = h.sub(args);
        check(&format!("{args:?} with the chain running"));
    }
    drop(r);
    // An owner SIGKILLed in a run: its guardian ends the run's group; the run is closed by
    // the fleet's next owner, not written to SQLite here.
    let slow = host(
        pg,
        "h1",
        &url,
        "[defaults]\nkill_grace = \"200ms\"\n[tasks.slow]\ncommand = \"echo started; exec sleep 30\"\n",
    );
    let slow_db = slow.run_root.join("runs.db");
    let mut r = slow.spawn(&["slow"]);
    let out = r.stdout.clone();
    r.wait_for("slow runs", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("started")
    });
    r.signal(libc::SIGKILL);
    r.wait_exit();
    common::wait_until("the guardian and the task are gone", || {
        slow.marked_processes().is_empty()
    });
    assert!(
        !slow_db.exists(),
        "the guardian of a SIGKILLed fleet owner left {}",
        slow_db.display()
    );
}

/// Case 3: the console of a host that does not own a chain (a standby there, or no
/// instance) shows it running on its owner ("▲ on h1"), not "▼ down"; its header names
/// this host by its fleet name (`[store] host`), not the machine's hostname.
#[test]
fn the_console_shows_a_chain_running_on_another_host_and_the_fleet_host_name() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("polish_console");
    let h1 = host(pg, "h1", &url, LONG_WORK);
    let h2 = host(pg, "h2", &url, LONG_WORK);
    let h3 = host(pg, "h3", &url, LONG_WORK);
    let (_r1, _r2) = owner_and_standby(&h1, &h2);
    for (env, name) in [(&h2, "h2"), (&h3, "h3")] {
        let (_serve, addr) = console_support::start_serve(env, "127.0.0.1", &[]);
        for path in ["/", "/chain/work"] {
            let resp = console_support::get(addr, path);
            let body = String::from_utf8_lossy(&resp.body).into_owned();
            assert_eq!(resp.status, 200, "{name} {path}: {body}");
            assert!(
                body.contains("▲</span> on h1") && !body.contains("▼"),
                "{name} {path}: the chain runs on h1:\n{body}"
            );
            assert!(
                body.contains(&format!("<span class=\"host\">{name}</span>")),
                "{name} {path}: the header names the fleet host:\n{body}"
            );
        }
    }
    // The owner's own console: up, under its own name.
    let (_serve, addr) = console_support::start_serve(&h1, "127.0.0.1", &[]);
    let body =
        String::from_utf8_lossy(&console_support::get(addr, "/chain/work").body).into_owned();
    assert!(
        body.contains("▲</span> up") && body.contains("<span class=\"host\">h1</span>"),
        "{body}"
    );
}

/// Case 6: messages. A launch the database refuses names the config file and where the
/// password came from; no password at all says how to give one; a certificate of an
/// unknown CA says to set `ca_file`; an unreachable database is named once; `store
/// import` of a store whose every chain is skipped says so (not "host none"); a
/// failover count of one is singular (in case 8).
#[test]
fn messages_name_the_file_and_what_to_fix() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("polish_messages");
    let file = |env: &TestEnv| env.config.display().to_string();

    let wrong = host_pw("h1", &url, Some("not-the-password"), WORK);
    let out = wrong.run(&["work"]);
    assert_eq!(out.code(), Some(78), "{}", out.stderr);
    let pw = wrong.path("pw").display().to_string();
    assert!(
        out.stderr.contains(&format!("{}: store: ", file(&wrong)))
            && out.stderr.contains("password authentication failed")
            && out.stderr.contains(&format!("password_file {pw}")),
        "{}",
        out.stderr
    );

    let none = host_pw("h1", &url, None, WORK);
    let out = none.run(&["work"]);
    assert_eq!(out.code(), Some(78), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "no password: set password_file or password_env in [store] of {}",
            file(&none)
        )) && !out.stderr.contains("invalid configuration"),
        "{}",
        out.stderr
    );

    let tls = host(pg, "h1", &url, &format!("tls = \"required\"\n{WORK}"));
    for args in [&["work"][..], &["check"][..]] {
        let out = if args == ["check"] {
            tls.sub(args)
        } else {
            tls.run(args)
        };
        assert_eq!(out.code(), Some(78), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("UnknownIssuer") && out.stderr.contains("set ca_file in [store]"),
            "{args:?}: {}",
            out.stderr
        );
    }

    let port = support::pg::free_port();
    let away = host_pw(
        "h1",
        &format!("postgresql://runchain@127.0.0.1:{port}/nowhere"),
        Some("pw"),
        WORK,
    );
    let shown = format!("runchain@127.0.0.1:{port}/nowhere");
    for args in [&["kick", "work"][..], &["stop", "--fleet", "work"][..]] {
        let out = away.sub(args);
        assert_eq!(out.code(), Some(75), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.matches(&shown).count(),
            1,
            "{args:?}: the URL once: {}",
            out.stderr
        );
    }

    // A host's SQLite store whose one chain runs in the fleet now: skipped.
    let single =
        TestEnv::new("[defaults]\nkill_grace = \"200ms\"\n[tasks.work]\ncommand = \"echo work\"\n");
    single.run(&["--once", "work"]).assert_code(0);
    let owner = host(
        pg,
        "h1",
        &url,
        "[defaults]\nsuccess_cooldown = \"1h\"\nkill_grace = \"200ms\"\n[tasks.work]\ncommand = \"echo work\"\n",
    );
    let mut r = owner.spawn(&["work"]);
    let e = r.stderr.clone();
    r.wait_for("h1 owns work", || {
        std::fs::read_to_string(&e)
            .unwrap_or_default()
            .contains("fleet: owner (epoch ")
    });
    let src = single.run_root.join("runs.db").display().to_string();
    let out = owner.sub(&["store", "import", &src]);
    assert_eq!(out.code(), Some(75), "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("nothing imported: every chain of it was skipped")
            && !out.stdout.contains("host none"),
        "{}",
        out.stdout
    );
}

/// Case 8: `status` on a host that does not own a chain shows the fleet's figures, not its
/// own stale CHAIN.state: h1 runs `work`, is SIGKILLed, h2 takes over and runs it; h1's
/// `status --json` has h2's last success (and its text says "1 failover", singular).
#[test]
fn status_of_a_former_owner_shows_the_fleets_figures() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("polish_stale");
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = dir.path().join("ran");
    let cfg = |cooldown: &str, name: &str| {
        format!(
            "[defaults]\nsuccess_cooldown = \"{cooldown}\"\nfail_cooldown = \"{cooldown}\"\nkill_grace = \"200ms\"\n\
             [tasks.work]\ncommand = \"echo {name} >> {}\"\n",
            ran.display()
        )
    };
    let h1 = host(pg, "h1", &url, &cfg("300ms", "h1"));
    // h2 runs once after its takeover, then cools down for an hour: its figures stay put.
    let h2 = host(pg, "h2", &url, &cfg("1h", "h2"));
    let mut r1 = h1.spawn(&["work"]);
    let e1 = r1.stderr.clone();
    r1.wait_for("h1 owns work and ran it twice", || {
        std::fs::read_to_string(&e1)
            .unwrap_or_default()
            .contains("fleet: owner (epoch ")
            && std::fs::read_to_string(&ran)
                .unwrap_or_default()
                .matches("h1")
                .count()
                >= 2
    });
    let mut r2 = h2.spawn(&["work"]);
    let e2 = r2.stderr.clone();
    r2.wait_for("h2 waits as standby", || {
        std::fs::read_to_string(&e2)
            .unwrap_or_default()
            .contains("fleet: standby: the chain runs on host h1")
    });
    r1.signal(libc::SIGKILL);
    r1.wait_exit();
    let status = |env: &TestEnv| -> serde_json::Value {
        let out = env.sub(&["status", "--json"]);
        out.assert_code(0);
        serde_json::from_str(&out.stdout).expect("status --json")
    };
    let work = |doc: &serde_json::Value| -> serde_json::Value {
        doc["chains"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["chain"] == "work"))
            .cloned()
            .unwrap_or_else(|| panic!("no chain work in {doc:#}"))
    };
    // h2 has run it (and recorded its end: it is in its hour's cooldown).
    let mut h2_view = serde_json::Value::Null;
    common::wait_until("h2 ran work after its takeover", || {
        let ran_h2 = std::fs::read_to_string(&ran)
            .unwrap_or_default()
            .contains("h2");
        h2_view = work(&status(&h2));
        ran_h2
            && h2_view["now"]["state"] == "cooldown"
            && h2_view["tasks"][0]["last_success"].is_string()
    });
    let h1_view = work(&status(&h1));
    assert_eq!(h1_view["fleet"]["host"], "h2", "{h1_view:#}");
    assert_eq!(
        h1_view["tasks"][0]["last_success"], h2_view["tasks"][0]["last_success"],
        "h1 shows the fleet's last success (h2's run), not its own:\nh1 {h1_view:#}\nh2 {h2_view:#}"
    );
    assert_eq!(
        h1_view["tasks"], h2_view["tasks"],
        "h1 {h1_view:#}\nh2 {h2_view:#}"
    );
    let text = h1.sub(&["status"]);
    assert!(
        text.stdout.contains("; 1 failover") && !text.stdout.contains("1 failovers"),
        "{}",
        text.stdout
    );
}

/// Case 7: `stop CHAIN` on a host where only a standby of the chain runs: 75 naming the
/// owner (SPEC), and how to stop that standby (its PID) or the chain everywhere; the
/// standby is left running.
#[test]
fn stop_on_a_standbys_host_names_the_standbys_pid() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("polish_stop_standby");
    let h1 = host(pg, "h1", &url, LONG_WORK);
    let h2 = host(pg, "h2", &url, LONG_WORK);
    let (_r1, mut r2) = owner_and_standby(&h1, &h2);
    let out = h2.sub(&["stop", "work"]);
    assert_eq!(out.code(), Some(75), "{}", out.stderr);
    assert!(
        out.stderr.contains("chain work runs on host h1 (epoch ")
            && out.stderr.contains(&format!("`kill {}`", r2.pid))
            && out.stderr.contains("run-chain stop --fleet work"),
        "{}",
        out.stderr
    );
    assert!(r2.try_status().is_none(), "the standby is left running");
    // As the hint says: SIGTERM stops this host's standby, exit 0.
    r2.signal(libc::SIGTERM);
    r2.assert_exit(0);
}
