//! A hung SMTP server (issue 17, point 3): the server accepts the TCP connection and then
//! goes silent at some step of the dialogue. `mail-test` and the mailer thread of a chain
//! must give up after the SMTP timeout (30 s, built in) in total, not after several of them
//! stacked up, and say so once, in words: "timed out after 30 s waiting for
//! smtp://127.0.0.1:PORT (during the greeting)", naming the server once and the step where it
//! went silent.
//!
//! The peers are small hand-written SMTP responders in this file (the peer, not the thing
//! under test): each answers the dialogue correctly up to its freeze point, then reads and
//! discards whatever comes, never answering, and holds the connection until the client
//! closes it. Every case waits for the real 30 s timeout, so the cases of one test run side
//! by side.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// run-chain's SMTP timeout (built in; SPEC.md has no key for it).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a delivery to a frozen server may take in all: the timeout, plus a generous
/// margin for a loaded machine, but well short of two timeouts back to back (what waiting for
/// a QUIT answer after a timed-out command costs).
const MAX_TOTAL: Duration = Duration::from_secs(48);

/// Where a peer goes silent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Freeze {
    /// Accepts the connection and never says anything, not even its greeting.
    Greeting,
    /// Greets, answers EHLO and MAIL FROM, never answers RCPT TO.
    Rcpt,
    /// Answers up to RCPT TO, never answers the DATA command.
    DataCommand,
    /// Answers DATA with 354, takes the whole message, never answers after its final dot
    /// (a content filter that hangs).
    EndOfData,
}

/// A frozen SMTP peer on 127.0.0.1. Its threads live until the test binary exits; each
/// connection is dropped when the client closes it.
struct Peer {
    port: u16,
    /// What the peer saw, in order: the command verbs, "<message>" for a message's final
    /// dot, "<closed>" when the client closed the connection.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    fn start(freeze: Freeze) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = Arc::clone(&log);
                std::thread::spawn(move || serve(conn, freeze, &log));
            }
        });
        Peer { port, seen }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// One connection of a peer: the dialogue up to `freeze`, then silence until the client
/// closes the connection (or breaks it).
fn serve(conn: TcpStream, freeze: Freeze, seen: &Mutex<Vec<String>>) {
    let note = |what: &str| seen.lock().unwrap().push(what.to_owned());
    let mut out = match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut reply = |text: &str| {
        let _ = out.write_all(text.as_bytes());
    };
    let mut frozen = freeze == Freeze::Greeting;
    if !frozen {
        reply("220 frozen-peer.test ESMTP\r\n");
    }
    let mut reader = BufReader::new(conn);
    let mut in_data = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                note("<message>");
                if freeze == Freeze::EndOfData {
                    frozen = true;
                } else if !frozen {
                    reply("250 2.0.0 accepted\r\n");
                }
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let verb = text
            .split([' ', ':', '\r', '\n'])
            .next()
            .unwrap_or("")
            .to_owned();
        note(&verb);
        if frozen {
            continue;
        }
        match verb.as_str() {
            "EHLO" => reply("250-frozen-peer.test\r\n250 8BITMIME\r\n"),
            "MAIL" => reply("250 2.1.0 ok\r\n"),
            "RCPT" if freeze == Freeze::Rcpt => frozen = true,
            "RCPT" => reply("250 2.1.5 ok\r\n"),
            "DATA" if freeze == Freeze::DataCommand => frozen = true,
            "DATA" => {
                in_data = true;
                reply("354 go ahead\r\n");
            }
            "QUIT" => {
                reply("221 bye\r\n");
                break;
            }
            _ => reply("502 5.5.2 not here\r\n"),
        }
    }
    note("<closed>");
}

fn email_section(url: &str) -> String {
    format!(
        "[email]\nto = [\"admin@example.com\"]\nfrom = \"run-chain@example.com\"\nsmtp = \"{url}\"\n"
    )
}

/// Waits until `runner` exits, at most `bound` from `since`; returns its status and when it
/// exited (counted from `since`).
fn exit_within(runner: &mut Runner, since: Instant, bound: Duration) -> (ExitStatus, Duration) {
    loop {
        if let Some(status) = runner.try_status() {
            return (status, since.elapsed());
        }
        assert!(
            since.elapsed() < bound,
            "run-chain {} still runs {:?} after it started (bound {bound:?}); stderr:\n{}",
            runner.pid,
            since.elapsed(),
            runner.stderr()
        );
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Asserts that `text` names `url` exactly once, and says that the wait for it timed out
/// after the SMTP timeout during `phase`.
fn assert_says_timed_out(text: &str, url: &str, phase: &str, what: &str) {
    let want = format!(
        "timed out after {} s waiting for {url} (during {phase})",
        SMTP_TIMEOUT.as_secs()
    );
    assert!(text.contains(&want), "{what} lacks {want:?}:\n{text}");
    assert_eq!(
        text.matches(url).count(),
        1,
        "{what} names {url} more than once:\n{text}"
    );
    assert_eq!(
        text.matches("smtp://").count(),
        1,
        "{what} names an SMTP URL more than once:\n{text}"
    );
    assert!(
        !text.contains("os error 11") && !text.contains("Resource temporarily unavailable"),
        "{what} shows the raw EAGAIN of a socket timeout:\n{text}"
    );
}

/// `mail-test` against servers that freeze at the greeting, at RCPT TO, at the DATA command
/// and after the message's final dot: each run exits 75 (a temporary failure, as for any
/// transient SMTP failure) about 30 s after it started (not 60 s: no second wait for a QUIT
/// answer), saying once where it timed out. The four runs wait side by side.
#[test]
fn mail_test_says_where_a_frozen_server_stopped_answering() {
    let cases = [
        (Freeze::Greeting, "the greeting"),
        (Freeze::Rcpt, "RCPT TO"),
        (Freeze::DataCommand, "DATA"),
        (Freeze::EndOfData, "DATA"),
    ];
    let mut running = Vec::new();
    for (freeze, phase) in cases {
        let peer = Peer::start(freeze);
        let env = TestEnv::new(&format!(
            "[tasks.t]\ncommand = \"true\"\n{}",
            email_section(&peer.url())
        ));
        let started = Instant::now();
        let runner = env.spawn(&["mail-test"]);
        running.push((freeze, phase, peer, env, runner, started));
    }
    for (freeze, phase, peer, _env, mut runner, started) in running {
        let (status, took) = exit_within(&mut runner, started, MAX_TOTAL);
        let stderr = runner.stderr();
        assert_eq!(
            status.code(),
            Some(75),
            "{freeze:?}: mail-test exited {status:?} after {took:?}; stderr:\n{stderr}"
        );
        assert!(
            took >= SMTP_TIMEOUT - Duration::from_secs(2),
            "{freeze:?}: mail-test gave up after {took:?}, before the {SMTP_TIMEOUT:?} timeout:\n{stderr}"
        );
        assert_says_timed_out(&stderr, &peer.url(), phase, &format!("{freeze:?}: stderr"));
        let seen = peer.seen();
        let expected_last = match freeze {
            Freeze::Greeting => None,
            Freeze::Rcpt => Some("RCPT"),
            Freeze::DataCommand => Some("DATA"),
            Freeze::EndOfData => Some("<message>"),
        };
        // The client gave up and closed the connection, saying nothing after the frozen step
        // (a QUIT there would only wait for an answer that never comes).
        wait_until(
            &format!("{freeze:?}: the peer saw the connection closed"),
            || peer.seen().last().map(String::as_str) == Some("<closed>"),
        );
        let seen_now = peer.seen();
        let before_close = &seen_now[..seen_now.len() - 1];
        assert_eq!(
            before_close.last().map(String::as_str),
            expected_last,
            "{freeze:?}: what the peer saw: {seen:?} then {seen_now:?}"
        );
    }
}

/// A chain whose alert meets a server that never greets: the mailer's log line says the same
/// as `mail-test` would, once, and the chain goes on.
#[test]
fn an_alert_to_a_frozen_server_is_logged_as_a_timeout_once() {
    let peer = Peer::start(Freeze::Greeting);
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.fail]
command = 'echo "error: no such table" >&2; exit 1'
{}"#,
        email_section(&peer.url())
    ));
    let started = Instant::now();
    let mut runner = env.spawn(&["fail"]);
    let stderr = runner.stderr.clone();
    let logged = || -> Vec<String> {
        std::fs::read_to_string(&stderr)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("not delivered yet"))
            .map(str::to_owned)
            .collect()
    };
    loop {
        if !logged().is_empty() {
            break;
        }
        assert!(
            runner.try_status().is_none(),
            "run-chain exited; stderr:\n{}",
            runner.stderr()
        );
        assert!(
            started.elapsed() < MAX_TOTAL,
            "no delivery failure logged {:?} after the start; stderr:\n{}",
            started.elapsed(),
            runner.stderr()
        );
        std::thread::sleep(Duration::from_millis(15));
    }
    let lines = logged();
    let line = &lines[0];
    assert!(
        line.contains("] warn:") && line.contains("-fail-first-failure-"),
        "the first-failure alert's delivery failure is a warning: {line}"
    );
    assert_says_timed_out(line, &peer.url(), "the greeting", "the mailer's log line");
    env.assert_running(&mut runner, "fail");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}
