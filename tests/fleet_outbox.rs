//! The fleet's outbox of alert mails (issue 20, test case 9) against a real PostgreSQL and a
//! real SMTP server (`tests/smtp_peer.py`, aiosmtpd): two "hosts" (two RUN_ROOTs, `host =
//! "h1"`, `"h2"`) share one database, lease "2s".
//!
//! An alert decided just before a kill -9 of the owner is delivered exactly once, by the new
//! owner: the alert's mail is committed with the run's end in `run_chain.outbox` (the SMTP
//! server is down at first, so the mail waits there after a failed try), h1 is killed, the
//! server comes up, h2 takes over and delivers it; the server receives that Message-ID once,
//! the row is gone after delivery, and nothing is written to RUN_ROOT/outbox/ in fleet mode.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/mail.rs"]
mod mail;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{send_signal, wait_until_for, TestEnv};
use fleet::{sql_int as n, text};
use mail::Peer;
use serde_json::Value;
use support::pg::Pg;

const LONG: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 where nothing listens (connections are refused) until `release`: bound,
/// never listening, so no other test's server takes it meanwhile (as in tests/alerts.rs).
struct ReservedPort {
    fd: i32,
    port: u16,
}

impl ReservedPort {
    fn new() -> ReservedPort {
        // SAFETY: plain socket calls on a descriptor we own; closed in `release`/drop.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            let rc = libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ReservedPort {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }

    fn release(&mut self) -> u16 {
        if self.fd >= 0 {
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
        self.port
    }
}

impl Drop for ReservedPort {
    fn drop(&mut self) {
        self.release();
    }
}

/// One "host": its own RUN_ROOT, the shared database, an SMTP server on `port`.
fn host(pg: &Pg, name: &str, url: &str, port: u16) -> TestEnv {
    host_with(pg, name, url, port, "")
}

/// [`host`] with more `[defaults]` keys (tests/support/mail.rs's `broken_host`).
fn host_with(pg: &Pg, name: &str, url: &str, port: u16, defaults: &str) -> TestEnv {
    mail::broken_host(
        pg,
        name,
        url,
        port,
        "1h",
        defaults,
        r"printf 'context-%s\\n' marker; echo 'error: the disk is full' >&2; exit 3",
    )
}

/// The files in RUN_ROOT/outbox/ (and below), if any.
fn outbox_files(env: &TestEnv) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&env.run_root.join("outbox"), &mut out);
    out
}

/// Test case 9: an alert decided just before a kill -9 of the owner is delivered exactly once,
/// by the new owner.
#[test]
fn an_alert_decided_before_a_kill_9_is_delivered_once_by_the_new_owner() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("outbox_kill");
    let mut reserved = ReservedPort::new();
    let port = reserved.port;
    let h1 = host(pg, "h1", &url, port);
    let h2 = host(pg, "h2", &url, port);
    let (mut r1, e1, mut r2, e2) = fleet::spawn_owner_then_standby(&h1, &h2, &["broken"], LONG);
    // The first failure's alert is committed in the fleet's outbox with the run's end, and
    // h1's mailer tried it once (the server is down: it stays there).
    wait_until_for(
        LONG,
        "the alert is in run_chain.outbox and was tried",
        || {
            n(
                pg,
                &db,
                "SELECT count(*) FROM run_chain.outbox o JOIN run_chain.runs r ON true
             WHERE r.outcome = 'failed' AND o.attempts >= 1 AND o.claim_until IS NULL",
            ) >= 1
                && text(&e1).contains("not delivered yet")
        },
    );
    let row = pg.psql(
        &db,
        "SELECT message_id || '|' || chain || '|' || (SELECT count(*) FROM run_chain.outbox)
         FROM run_chain.outbox ORDER BY id LIMIT 1",
    );
    let f: Vec<&str> = row.trim().split('|').collect();
    assert_eq!(f.len(), 3, "{row}");
    let (message_id, count) = (f[0].to_string(), f[2]);
    assert_eq!(count, "1", "one alert decided: {row}");
    assert!(
        message_id.starts_with('<') && message_id.contains("first-failure"),
        "{row}"
    );
    // The run's end and its alert were committed together (the run is in the store).
    assert_eq!(
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE outcome = 'failed' AND host = 'h1'"
        ),
        1
    );

    send_signal(r1.pid, libc::SIGKILL);
    r1.wait_exit();
    let peer = Peer::with_maildir(&h2, reserved.release());
    wait_until_for(LONG, "h2 owns the lease", || {
        text(&e2).contains("fleet: owner (epoch ")
    });
    wait_until_for(LONG, "the SMTP server received the alert", || {
        !peer.messages().is_empty()
    });
    wait_until_for(LONG, "the outbox row is gone after delivery", || {
        n(pg, &db, "SELECT count(*) FROM run_chain.outbox") == 0
    });
    // h2 delivered it (h1 is dead), once, with the Message-ID fixed when it was decided.
    assert!(text(&e2).contains(" sent: "), "h2's log:\n{}", text(&e2));
    let msgs = peer.messages();
    let with_id: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["message_id"].as_str() == Some(message_id.as_str()))
        .collect();
    assert_eq!(
        with_id.len(),
        1,
        "exactly one message {message_id}: {msgs:?}"
    );
    let body = with_id[0].to_string();
    assert!(body.contains("error: the disk is full"), "{body}");
    // Nothing in RUN_ROOT/outbox/ on either host.
    assert!(outbox_files(&h1).is_empty(), "{:?}", outbox_files(&h1));
    assert!(outbox_files(&h2).is_empty(), "{:?}", outbox_files(&h2));

    send_signal(r2.pid, libc::SIGTERM);
    r2.wait_exit();
    let msgs = peer.messages();
    let again = msgs
        .iter()
        .filter(|m| m["message_id"].as_str() == Some(message_id.as_str()))
        .count();
    assert_eq!(again, 1, "still one message {message_id}: {msgs:?}");
}

/// A downtime alert decided by the new owner between runs (it never saw the streak's failed
/// run, which the dead owner ran) quotes that run from the fleet's store: its output and
/// outcome, not "not found" in the new owner's empty RUN_ROOT.
#[test]
fn a_new_owners_downtime_alert_quotes_the_failed_run_from_the_fleet_store() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("outbox_quote");
    let env = TestEnv::new("");
    let peer_port = {
        let mut r = ReservedPort::new();
        r.release()
    };
    let peer = Peer::with_maildir(&env, peer_port);
    let defaults = r#"non_recoverable_downtime = "12s""#;
    let h1 = host_with(pg, "h1", &url, peer_port, defaults);
    let h2 = host_with(pg, "h2", &url, peer_port, defaults);
    let (mut r1, _e1, mut r2, e2) = fleet::spawn_owner_then_standby(&h1, &h2, &["broken"], LONG);
    wait_until_for(LONG, "h1's first-failure alert arrived", || {
        !peer.messages().is_empty()
    });
    send_signal(r1.pid, libc::SIGKILL);
    r1.wait_exit();
    wait_until_for(LONG, "h2 owns the lease", || {
        text(&e2).contains("fleet: owner (epoch ")
    });
    // fail_cooldown is 1h: h2 runs nothing; the downtime window ends while it waits.
    wait_until_for(LONG, "the downtime alert arrived", || {
        peer.messages().iter().any(|m| m["alert"] == "downtime")
    });
    let body = peer.body_of("downtime");
    eprintln!("the downtime mail's body:\n{body}");
    // Its output (not only the last line, which the resume state carries) comes from the
    // fleet's store.
    assert!(
        body.contains("context-marker")
            && body.contains("error: the disk is full")
            && !body.contains("not in the record store"),
        "the downtime mail quotes h1's failed run from the fleet's store:\n{body}"
    );
    assert_eq!(
        n(
            pg,
            &db,
            "SELECT count(*) FROM run_chain.runs WHERE host = 'h2'"
        ),
        0,
        "h2 ran nothing (the quoted run is h1's)"
    );
    send_signal(r2.pid, libc::SIGTERM);
    r2.wait_exit();
}
