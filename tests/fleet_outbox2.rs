//! The fleet's outbox of alert mails, second part, against a real PostgreSQL and a real SMTP
//! server (`tests/smtp_peer.py`, aiosmtpd): two "hosts" (two RUN_ROOTs with their own `host`)
//! share one database, lease "2s".
//!
//! - The retry back-off of a mail is the row's (`next_try_at`, on the database's clock), not
//!   the mailer's memory: after two refusals (451) the owner is killed, and the new owner does
//!   not try the mail before the stored next try; it delivers it after, once.
//! - The mailer is woken at the commit of the run's end that holds the alert (no 2 s poll):
//!   several alerts in a row arrive within a fraction of a second of their runs' ends.
//! - A fleet alert names the host by `[store] host`, not the machine's hostname.

mod common;
#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/mail.rs"]
mod mail;
mod support;

use std::time::Duration;

use common::{send_signal, wait_until_for, TestEnv};
use fleet::text;
use mail::Peer;
use support::pg::{free_port, Pg};

const LONG: Duration = Duration::from_secs(60);

/// One "host" named `name`: its own RUN_ROOT, the shared database, an SMTP server on `port`,
/// task `broken` running `command` (tests/support/mail.rs's `broken_host`).
fn host(pg: &Pg, name: &str, url: &str, port: u16, fail_cooldown: &str, command: &str) -> TestEnv {
    mail::broken_host(pg, name, url, port, fail_cooldown, "", command)
}

/// A number from `sql`; None while it cannot be read (no schema or table yet, a NULL).
fn num(pg: &Pg, db: &str, sql: &str) -> Option<f64> {
    pg.try_psql(db, sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A mail refused twice is in back-off when its owner dies: the new owner waits for the
/// row's `next_try_at` (10 s after the second refusal) before it tries, and delivers it
/// once. (Before: the back-off was in the dead mailer's memory, and the new owner tried at
/// its first pass, about 2-3 s after the kill.)
#[test]
fn a_new_owner_waits_for_the_stored_back_off_then_delivers_once() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("outbox2_backoff");
    let port = free_port();
    let cmd = r"echo 'error: the disk is full' >&2; exit 3";
    let h1 = host(pg, "h1", &url, port, "1h", cmd);
    let h2 = host(pg, "h2", &url, port, "1h", cmd);
    let peer = Peer::start(
        &h1,
        port,
        &[
            "--data-reply",
            "451 4.3.0 try again later",
            "--data-reply",
            "451 4.3.0 try again later",
        ],
    );
    let (mut r1, _e1, mut r2, e2) = fleet::spawn_owner_then_standby(&h1, &h2, &["broken"], LONG);
    // h1's mailer tries twice (refused: 5 s back-off after the first), and the second
    // refusal is kept in the row: two tries, no claim, the next try 10 s on.
    wait_until_for(LONG, "two refusals, recorded in the row", || {
        peer.events("rejected").len() == 2
            && num(
                pg,
                &db,
                "SELECT count(*) FROM run_chain.outbox WHERE attempts = 2 AND claim_until IS NULL
                 AND next_try_at > now()",
            ) == Some(1.0)
    });
    send_signal(r1.pid, libc::SIGKILL);
    r1.wait_exit();
    let killed_at = now_epoch();
    let next_try = num(
        pg,
        &db,
        "SELECT extract(epoch FROM next_try_at) FROM run_chain.outbox",
    )
    .expect("the row's next_try_at");
    let row_error = pg.psql(&db, "SELECT error FROM run_chain.outbox");
    wait_until_for(LONG, "h2 owns the lease", || {
        text(&e2).contains("fleet: owner (epoch ")
    });
    let owner_at = now_epoch();
    wait_until_for(LONG, "the SMTP server received the alert", || {
        !peer.events("message").is_empty()
    });
    wait_until_for(LONG, "the outbox row is gone after delivery", || {
        num(pg, &db, "SELECT count(*) FROM run_chain.outbox") == Some(0.0)
    });
    let msgs = peer.events("message");
    let rejected = peer.events("rejected");
    eprintln!(
        "kill at {killed_at:.2}, h2 owner by {owner_at:.2} (+{:.2} s), stored next try +{:.2} s, delivered +{:.2} s",
        owner_at - killed_at,
        next_try - killed_at,
        msgs[0]["t"].as_f64().unwrap_or(0.0) - killed_at
    );
    assert_eq!(rejected.len(), 2, "no other try was refused: {rejected:?}");
    assert_eq!(msgs.len(), 1, "delivered once: {msgs:?}");
    let t = msgs[0]["t"].as_f64().expect("t");
    assert!(
        t >= next_try,
        "h2 tried {:.2} s before the stored next try (h2 owner at +{:.2} s after the kill)",
        next_try - t,
        owner_at - killed_at
    );
    // The second failure's back-off: 10 s (5 s doubled), from the refusal; kept with the
    // server's answer.
    assert!(
        next_try - killed_at > 5.0,
        "the next try is {:.1} s after the kill",
        next_try - killed_at
    );
    assert!(
        row_error.contains("451"),
        "the row keeps the error: {row_error}"
    );
    // From the stored due time, not from a slow poll.
    assert!(
        t < next_try.max(owner_at) + 8.0,
        "delivered {:.2} s after it was due",
        t - next_try.max(owner_at)
    );
    assert!(text(&e2).contains(" sent: "), "h2's log:\n{}", text(&e2));
    send_signal(r2.pid, libc::SIGTERM);
    r2.wait_exit();
    assert_eq!(peer.events("message").len(), 1);
}

/// Six alerts in a row (each failure a new one: its last line differs), then a `recovered`
/// one, arrive within a fraction of a second of their runs' ends, and the idle mailer does
/// not look at the outbox every 2 s (the database's statement log, an observation window of
/// 7 s): it is woken at the commit of the run's end. Each mail names the host by `[store]
/// host`.
///
/// (Before, the loop woke the mailer when it put the mail, before the commit, and the
/// mailer also polled every 2 s: the mail left at once when the batch reached the DB thread
/// before the mailer's query, else at the next poll. Mostly the former, so the delays alone
/// do not tell the two apart; the poll does.)
#[test]
fn alerts_leave_at_the_commit_of_the_runs_end_and_name_the_fleet_host() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("outbox2_wake");
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE {db} SET log_statement = 'all'"),
    );
    let port = free_port();
    let scratch = TestEnv::new("");
    let counter = scratch.path("count");
    // The n-th run fails with the n-th word: a new signature each time (a number would be
    // normalised away).
    let cmd = format!(
        r"n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -gt 6 ] && exit 0; set -- alpha beta gamma delta epsilon zeta eta theta iota kappa; shift $((n-1)); echo error: case $1 >&2; exit 3",
        c = counter.display()
    );
    let fleet_host = "fleet-name-not-the-hostname";
    let h1 = host(pg, fleet_host, &url, port, "700ms", &cmd);
    let peer = Peer::start(&h1, port, &[]);
    let mut r1 = h1.spawn(&["broken"]);
    let e1 = r1.stderr.clone();
    const N: usize = 6;
    wait_until_for(LONG, "six alerts and the recovery arrived", || {
        peer.events("message").len() > N
    });
    // The chain is in its success cooldown (1 h) now, the outbox empty: how often does the
    // mailer look at it?
    let looks = || {
        pg.log_text()
            .lines()
            .filter(|l| {
                l.contains(&format!("@{db} "))
                    && l.contains("FROM run_chain.outbox WHERE chain = $1 AND set_aside_at IS NULL")
            })
            .count()
    };
    wait_until_for(LONG, "the outbox is empty", || {
        num(pg, &db, "SELECT count(*) FROM run_chain.outbox") == Some(0.0)
    });
    let before = looks();
    assert!(before >= 1, "the statement log shows the mailer's queries");
    std::thread::sleep(Duration::from_secs(7)); // an observation window, not a wait
    let idle_looks = looks() - before;
    eprintln!("the mailer's looks at the outbox: {before} until idle, {idle_looks} in 7 s idle");
    send_signal(r1.pid, libc::SIGTERM);
    r1.wait_exit();
    let msgs = peer.events("message");
    let mut delays = Vec::new();
    let mut hosts = Vec::new();
    for m in msgs.iter().take(N) {
        let body = m["body"].as_str().unwrap_or_default();
        // "The last failed run of the streak (run N):"
        let run_id: i64 = body
            .split("(run ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no run id in the mail:\n{body}"));
        let stop = num(
            pg,
            &db,
            &format!(
                "SELECT r.stop_ms FROM run_chain.runs r JOIN run_chain.series s ON s.id = r.series
                 WHERE s.chain = 'broken' AND s.task = 'broken' AND r.run_id = {run_id}"
            ),
        )
        .unwrap_or_else(|| panic!("run {run_id} ended in the store"))
            / 1000.0;
        let t = m["t"].as_f64().expect("t");
        delays.push(t - stop);
        let host_line = body
            .lines()
            .find(|l| l.starts_with("Host:"))
            .unwrap_or_default()
            .trim_end()
            .to_string();
        let subject = m["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|h| h[0] == "Subject")
            .and_then(|h| h[1].as_str())
            .unwrap_or_default()
            .to_string();
        hosts.push((host_line, subject));
    }
    let mut sorted = delays.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = (sorted[N / 2 - 1] + sorted[N / 2]) / 2.0;
    eprintln!(
        "run end -> mail arrival (s): {:?}; median {median:.3}",
        delays.iter().map(|d| format!("{d:.3}")).collect::<Vec<_>>()
    );
    assert!(
        median < 1.0,
        "the median delay from a run's end to its mail is {median:.3} s (delays {delays:?}); h1's log:\n{}",
        text(&e1)
    );
    assert!(
        idle_looks <= 1,
        "the idle mailer looked at the outbox {idle_looks} times in 7 s"
    );
    // The host is the fleet's name for it, in the body and the subject.
    for (line, subject) in hosts {
        assert_eq!(line, format!("Host:          {fleet_host}"));
        assert!(subject.contains(fleet_host), "subject: {subject}");
    }
}

/// A new alert is the moment to try the waiting ones again (as with files on one host): the
/// first alert is refused (451: its row's next try 5 s on), the next run fails 2 s later
/// with a new alert, and both leave then, the first one first, before the first one's
/// stored next try.
#[test]
fn a_new_alert_makes_the_waiting_ones_due_now() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("outbox2_new");
    let port = free_port();
    let scratch = TestEnv::new("");
    let counter = scratch.path("count");
    let cmd = format!(
        r"n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -gt 2 ] && exit 0; set -- alpha beta; shift $((n-1)); echo error: case $1 >&2; exit 3",
        c = counter.display()
    );
    let h1 = host(pg, "h1", &url, port, "1500ms", &cmd);
    let peer = Peer::start(&h1, port, &["--data-reply", "451 4.3.0 try again later"]);
    let mut r1 = h1.spawn(&["broken"]);
    wait_until_for(LONG, "both alerts arrived", || {
        peer.events("message").len() >= 2
    });
    send_signal(r1.pid, libc::SIGTERM);
    r1.wait_exit();
    let refused = peer.events("rejected");
    let msgs = peer.events("message");
    assert_eq!(refused.len(), 1, "{refused:?}");
    let refused_at = refused[0]["t"].as_f64().expect("t");
    let first = &msgs[0];
    let second = &msgs[1];
    eprintln!(
        "refused at 0; {} +{:.2} s, {} +{:.2} s",
        first["alert"],
        first["t"].as_f64().unwrap_or(0.0) - refused_at,
        second["alert"],
        second["t"].as_f64().unwrap_or(0.0) - refused_at
    );
    assert_eq!(
        first["message_id"], refused[0]["message_id"],
        "the refused one goes first"
    );
    assert_eq!(first["alert"], "first-failure");
    assert_eq!(second["alert"], "new-failure");
    let first_at = first["t"].as_f64().expect("t");
    assert!(
        first_at - refused_at < 4.5,
        "the refused alert left {:.2} s after the refusal: not before its back-off (5 s), although a new alert came 1.5 s after",
        first_at - refused_at
    );
}
