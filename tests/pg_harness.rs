//! Self-tests of the fleet tests' harness (tests/support): the PostgreSQL server it starts
//! (roles, authentication methods, TLS, restarts on the same port), PgBouncer in transaction
//! mode, the network namespace's cut and heal, and the ledger's stamp program and judge.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::ledger::{self, Ledger};
use support::netns::Netns;
use support::pg::{self, Mode, Pg, PgBouncer};

/// psql as a client with a libpq connection string; (success, stdout, stderr).
fn psql_conn(cmd: Command, conninfo: &str, password: &str, sql: &str) -> (bool, String, String) {
    let mut cmd = cmd;
    let out = cmd
        .env("PGPASSWORD", password)
        .env_remove("PGSSLMODE")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(conninfo)
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn psql() -> Command {
    Command::new(pg::pg_tool("psql"))
}

/// The authentication request the server answers a (non-TLS) startup message for `user` with:
/// the code of its first `R` message (3 = cleartext, 5 = MD5, 10 = SASL), read off the wire
/// without sending any password.
fn auth_request(port: u16, user: &str) -> i32 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for kv in ["user", user, "database", "postgres"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).expect("send startup");
    let mut head = [0u8; 9];
    s.read_exact(&mut head).expect("read the server's answer");
    assert_eq!(
        head[0], b'R',
        "expected an authentication request, got message {:?}",
        head[0] as char
    );
    i32::from_be_bytes([head[5], head[6], head[7], head[8]])
}

#[test]
fn runchain_connects_over_tcp_to_a_fresh_database_it_owns() {
    let pg = Pg::shared();
    let (name, url) = pg.fresh_database("harness");
    assert_eq!(
        url,
        format!("postgresql://runchain@127.0.0.1:{}/{name}", pg.port)
    );
    let conn = format!(
        "host=127.0.0.1 port={} user=runchain dbname={name} sslmode=disable",
        pg.port
    );
    let (ok, out, err) = psql_conn(
        psql(),
        &conn,
        pg.password(),
        "SELECT current_user || ' ' || current_database() || ' ' || \
         (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database())",
    );
    assert!(ok, "psql as runchain failed: {err}");
    assert_eq!(out, format!("runchain {name} runchain"));
    // The URL form works too (what a config's [store] url holds).
    let (ok, out, err) = psql_conn(psql(), &url, pg.password(), "SELECT 42");
    assert!(ok && out == "42", "psql {url}: {out} {err}");
    // A wrong password is refused: the check above is a real one.
    let (ok, _, err) = psql_conn(psql(), &conn, "wrong", "SELECT 1");
    assert!(!ok, "a wrong password was accepted");
    assert!(
        err.contains("password authentication failed"),
        "unexpected error: {err}"
    );
    // The password file helper: 0600, the password and a newline.
    let dir = tempfile::tempdir().unwrap();
    let f = pg.write_runchain_password(&dir.path().join("pw"));
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&f).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&f).unwrap(),
        format!("{}\n", pg.password())
    );
}

#[test]
fn clear_user_and_md5_user_are_asked_for_cleartext_and_md5_runchain_for_scram() {
    let pg = Pg::shared();
    assert_eq!(
        auth_request(pg.port, "clear_user"),
        3,
        "clear_user: cleartext"
    );
    assert_eq!(auth_request(pg.port, "md5_user"), 5, "md5_user: MD5");
    assert_eq!(auth_request(pg.port, "runchain"), 10, "runchain: SASL");
    // md5_user's password is stored as MD5 (else pg_hba's md5 would have upgraded to SCRAM).
    let stored = pg.psql(
        "postgres",
        "SELECT rolname || ':' || CASE WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'SCRAM' \
         WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE rolpassword END FROM pg_authid \
         WHERE rolname IN ('runchain', 'clear_user', 'md5_user') ORDER BY rolname",
    );
    assert_eq!(
        stored.lines().collect::<Vec<_>>(),
        ["clear_user:SCRAM", "md5_user:md5", "runchain:SCRAM"]
    );
    // Both log in with their passwords, and the log names the method used.
    for (user, pw, method) in [
        ("clear_user", pg.clear_password(), "method=password"),
        ("md5_user", pg.md5_password(), "method=md5"),
    ] {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres sslmode=disable",
            pg.port
        );
        let (ok, out, err) = psql_conn(psql(), &conn, pw, "SELECT current_user");
        assert!(ok && out == user, "{user}: {out} {err}");
        let want = format!("identity=\"{user}\" {method}");
        let mut found = false;
        let t = Instant::now();
        while !found && t.elapsed() < Duration::from_secs(20) {
            found = pg.log_text().contains(&want);
            if !found {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        assert!(found, "the server log has no {want:?}:\n{}", pg.log_text());
    }
}

#[test]
fn tls_verifies_against_the_test_ca_for_localhost() {
    let pg = Pg::shared();
    let ca = pg.ca_file().display().to_string();
    for host in ["localhost", "127.0.0.1"] {
        let conn = format!(
            "host={host} port={} user=runchain dbname=postgres sslmode=verify-full sslrootcert={ca}",
            pg.port
        );
        let (ok, out, err) = psql_conn(
            psql(),
            &conn,
            pg.password(),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        assert!(ok, "verify-full to {host}: {err}");
        assert_eq!(out, "t", "not over TLS");
    }
    // A name the certificate does not carry fails verification: the check is real.
    let conn = format!(
        "host=not-the-server.invalid hostaddr=127.0.0.1 port={} user=runchain dbname=postgres \
         sslmode=verify-full sslrootcert={ca}",
        pg.port
    );
    let (ok, _, err) = psql_conn(psql(), &conn, pg.password(), "SELECT 1");
    assert!(!ok, "verify-full accepted a wrong host name");
    assert!(err.contains("does not match host name"), "{err}");
}

#[test]
fn pgbouncer_in_transaction_mode_answers_runchain() {
    let pg = Pg::shared();
    let (name, _) = pg.fresh_database("bouncer");
    let bouncer = PgBouncer::new(pg);
    let url = bouncer.url(&name);
    assert_eq!(
        url,
        format!("postgresql://runchain@127.0.0.1:{}/{name}", bouncer.port)
    );
    let ini = std::fs::read_to_string(bouncer.dir().join("pgbouncer.ini")).unwrap();
    assert!(ini.contains("pool_mode = transaction"), "{ini}");
    let conn = format!("{url}?sslmode=disable");
    let (ok, out, err) = psql_conn(
        psql(),
        &conn,
        pg.password(),
        "SELECT current_user || ' ' || current_database()",
    );
    assert!(
        ok,
        "through pgbouncer: {err}\npgbouncer log:\n{}",
        bouncer.log_text()
    );
    assert_eq!(out, format!("runchain {name}"));
    // The connection went through the bouncer (the server sees pgbouncer's own connection,
    // with the same user, from 127.0.0.1) and the bouncer logged the login.
    assert!(
        bouncer.log_text().contains("login attempt: db="),
        "{}",
        bouncer.log_text()
    );
    let (ok, _, _) = psql_conn(psql(), &conn, "wrong", "SELECT 1");
    assert!(!ok, "pgbouncer accepted a wrong password");
}

#[test]
fn restart_fast_and_immediate_and_stop_start_keep_the_same_port() {
    let pg = Pg::new();
    let port = pg.port;
    let ask = |pg: &Pg| pg.try_psql("postgres", "SELECT 1");
    assert_eq!(ask(&pg).as_deref(), Ok("1"));
    let mut pids = vec![pg.postmaster_pid().expect("postmaster.pid")];
    for mode in [Mode::Fast, Mode::Immediate] {
        pg.restart(mode);
        assert_eq!(pg.port, port);
        assert_eq!(ask(&pg).as_deref(), Ok("1"), "after restart {mode:?}");
        let conn =
            format!("host=127.0.0.1 port={port} user=runchain dbname=postgres sslmode=disable");
        let (ok, _, err) = psql_conn(psql(), &conn, pg.password(), "SELECT 1");
        assert!(ok, "TCP on the same port after restart {mode:?}: {err}");
        pids.push(pg.postmaster_pid().expect("postmaster.pid"));
    }
    assert!(
        pids[0] != pids[1] && pids[1] != pids[2],
        "restart did not restart: {pids:?}"
    );
    pg.stop();
    assert!(!pg.accepts(), "still accepting after stop");
    assert!(ask(&pg).is_err());
    pg.start();
    assert!(pg.accepts());
    assert_eq!(ask(&pg).as_deref(), Ok("1"), "after stop + start");
    let dir = pg.dir().to_path_buf();
    let pm = pg.postmaster_pid().unwrap();
    drop(pg);
    assert!(pg::pid_gone(pm), "the postmaster {pm} outlived Drop");
    assert!(!dir.exists(), "{} outlived Drop", dir.display());
}

#[test]
fn a_namespace_reaches_the_server_until_cut_and_again_after_heal() {
    let pg = Pg::shared();
    let ns = Netns::new();
    let name = ns.name.clone();
    assert!(Netns::exists(&name));
    let conn = format!(
        "host={} port={} user=runchain dbname=postgres sslmode=disable connect_timeout=2",
        ns.host_addr(),
        pg.port
    );
    let sql = "SELECT host(inet_client_addr())";
    let inside = || psql_conn(ns.command(pg::pg_tool("psql")), &conn, pg.password(), sql);
    let (ok, out, err) = inside();
    assert!(ok, "from inside the namespace: {err}");
    assert_eq!(
        out,
        ns.inside_addr(),
        "the server saw another client address"
    );
    ns.cut();
    let t = Instant::now();
    let (ok, _, err) = inside();
    assert!(!ok, "connected across the cut");
    assert!(err.contains("timeout"), "expected a timeout, got: {err}");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "failed too fast: {err}"
    );
    // The host itself is untouched by the cut.
    assert_eq!(pg.try_psql("postgres", "SELECT 1").as_deref(), Ok("1"));
    ns.heal();
    let (ok, out, err) = inside();
    assert!(ok, "after heal: {err}");
    assert_eq!(out, ns.inside_addr());
    let host_if = ns.host_if.clone();
    drop(ns);
    assert!(!Netns::exists(&name), "namespace {name} outlived Drop");
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&host_if)
            .exists(),
        "{host_if} outlived Drop"
    );
}

// --- the ledger -------------------------------------------------------------------------------

#[test]
fn the_task_script_stamps_start_ticks_and_end_and_end_on_term() {
    let dir = tempfile::tempdir().unwrap();
    let led = dir.path().join("ledger");
    let script = ledger::write_task_script(&dir.path().join("t.sh"), &led, 3, "0.05");
    let before = ledger::mono_ns();
    let st = Command::new(&script)
        .env("RC_HOST", "h1")
        .env("RUN_CHAIN_NAME", "c")
        .env("RUN_CHAIN_TASK", "a")
        .status()
        .unwrap();
    assert!(st.success());
    let l = Ledger::read(&led);
    assert_eq!(l.runs.len(), 1, "{:?}", l.runs);
    let r = &l.runs[0];
    assert_eq!(
        (r.host.as_str(), r.chain.as_str(), r.task.as_str()),
        ("h1", "c", "a")
    );
    assert!(r.ended && r.ticks == 3, "{r}");
    assert!(r.start > before && r.end <= ledger::mono_ns());
    assert!(
        r.end - r.start >= 150_000_000,
        "3 ticks of 50 ms took {} ns",
        r.end - r.start
    );
    // TERM: the trap stamps E and the script exits 143.
    let mut child = Command::new(&script)
        .env("RC_HOST", "h2")
        .env("RUN_CHAIN_NAME", "c")
        .env("RUN_CHAIN_TASK", "a")
        .spawn()
        .unwrap();
    let t = Instant::now();
    while Ledger::read(&led).of_host("h2").all(|r| r.ticks < 2) {
        assert!(t.elapsed() < Duration::from_secs(30), "no ticks from h2");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(143));
    let l = Ledger::read(&led);
    let r = l.of_host("h2").next().unwrap();
    assert!(r.ended && r.ticks < 3, "{r}");
    assert_eq!(r.pid, child.id() as i32);
    l.assert_no_overlap();
}

#[test]
fn the_judge_finds_an_overlap_between_hosts() {
    let text = "S h1 c a 100 1000\nT h1 c a 100 2000\nS h2 c a 200 2500\n\
                T h1 c a 100 3000\nE h2 c a 200 4000\n";
    let l = Ledger::parse(text).unwrap();
    let o = l.overlaps();
    assert_eq!(o.len(), 1);
    assert_eq!((o[0].0.host.as_str(), o[0].1.host.as_str()), ("h1", "h2"));
    let msg = l
        .overlap_report()
        .expect("no report for an overlap (assert_no_overlap would pass)");
    assert!(
        msg.contains("host h1 c/a pid 100") && msg.contains("host h2 c/a pid 200"),
        "{msg}"
    );
    // A killed run (no E) still counts up to its last tick.
    let l = Ledger::parse("S h1 c a 1 10\nT h1 c a 1 50\nS h2 c a 2 40\nE h2 c a 2 60\n").unwrap();
    assert_eq!(l.overlaps().len(), 1);
    assert_eq!(l.open_runs().len(), 1);
}

#[test]
fn the_judge_reports_nothing_for_sequential_runs_and_measures_takeovers() {
    let text = "S h1 c a 100 1000\nT h1 c a 100 2000\nE h1 c a 100 3000\n\
                S h2 c a 200 3001\nT h2 c a 200 5000\n\
                S h1 c a 300 9000\nE h1 c a 300 9500\n\
                S h1 c b 301 9600\nS h1 c c 302 9601\nE h1 c b 301 9700\n";
    let l = Ledger::parse(text).unwrap();
    assert!(l.overlaps().is_empty(), "{:?}", l.overlaps());
    assert_eq!(l.overlap_report(), None);
    l.assert_no_overlap();
    // Same host may overlap itself (two tasks of one host are not the judge's business).
    assert_eq!(l.runs.len(), 5);
    let next = l.first_start_after(None, 5000).unwrap();
    assert_eq!((next.host.as_str(), next.start), ("h1", 9000));
    assert_eq!(l.first_start_after(Some("h2"), 0).unwrap().start, 3001);
    assert!(l.first_start_after(Some("h2"), 3001).is_none());
    assert_eq!(l.last().unwrap().pid, 302);
}

#[test]
fn the_judge_rejects_malformed_ledgers() {
    assert!(Ledger::parse("S h1 c a 1\n").is_err());
    assert!(Ledger::parse("X h1 c a 1 2\n").is_err());
    assert!(Ledger::parse("T h1 c a 1 2\n").is_err(), "T without S");
    assert!(
        Ledger::parse("S h1 c a 1 2\nS h1 c a 1 3\n").is_err(),
        "second S"
    );
}
