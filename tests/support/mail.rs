//! The fleet tests' SMTP side: a real SMTP server (`tests/smtp_peer.py`, aiosmtpd) and the
//! `[email]` table that sends a host's alerts to it.
//!
//! Include it next to `common`, `support` and `fleet` (it names `crate::common`,
//! `crate::support` and `crate::fleet`):
//! ```ignore
//! mod common;
//! mod support;
//! #[path = "support/fleet.rs"]
//! mod fleet;
//! #[path = "support/mail.rs"]
//! mod mail;
//! ```
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};

use serde_json::Value;

use crate::common::{TestEnv, DEADLINE};
use crate::support::pg::Pg;

pub const PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_peer.py");

/// A `tests/smtp_peer.py` server listening on 127.0.0.1:`port`, logging to DIR/smtp.log.
/// Dropping it SIGKILLs and reaps it.
pub struct Peer {
    child: Child,
    log: PathBuf,
    pub port: u16,
}

impl Peer {
    /// A server on `port` with `extra` arguments (e.g. `--data-reply "451 ..."`).
    pub fn start(env: &TestEnv, port: u16, extra: &[&str]) -> Peer {
        Peer::spawn(env, port, false, extra)
    }

    /// A server on `port` that also keeps the mails in DIR/smtp.mails (`--maildir`).
    pub fn with_maildir(env: &TestEnv, port: u16) -> Peer {
        Peer::spawn(env, port, true, &[])
    }

    fn spawn(env: &TestEnv, port: u16, maildir: bool, extra: &[&str]) -> Peer {
        let log = env.path("smtp.log");
        let stderr = env.path("smtp.stderr");
        let mut cmd = env.command_for("python3");
        cmd.arg(PEER_SCRIPT)
            .arg("--port")
            .arg(port.to_string())
            .arg("--log")
            .arg(&log);
        if maildir {
            cmd.arg("--maildir").arg(env.path("smtp.mails"));
        }
        cmd.args(extra)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).expect("peer stderr"));
        let mut child = cmd.spawn().expect("spawn python3 tests/smtp_peer.py");
        let stdout = child.stdout.take().expect("peer stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
        assert_eq!(
            line.trim().parse::<u16>().ok(),
            Some(port),
            "smtp_peer.py did not listen on {port} (got {line:?}); stderr:\n{}",
            fs::read_to_string(&stderr).unwrap_or_default()
        );
        Peer { child, log, port }
    }

    /// The events of kind `event` logged so far (complete lines only).
    pub fn events(&self, event: &str) -> Vec<Value> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// The accepted mails so far.
    pub fn messages(&self) -> Vec<Value> {
        self.events("message")
    }

    /// The body of the first accepted mail of alert `alert` (which must have arrived).
    pub fn body_of(&self, alert: &str) -> String {
        let msgs = self.messages();
        let mail = msgs
            .iter()
            .find(|m| m["alert"] == alert)
            .unwrap_or_else(|| panic!("{alert} mail"));
        mail["body"].as_str().unwrap_or_default().to_string()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; reaped just after.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The `[email]` table sending alerts to admin@example.com through 127.0.0.1:`port`.
pub fn email_table(port: u16) -> String {
    format!(
        r#"
[email]
to = ["admin@example.com"]
from = "run-chain@example.com"
smtp = "smtp://127.0.0.1:{port}"
"#
    )
}

/// A fleet host `name` (tests/support/fleet.rs's `host_env`, lease 2 s) whose alerts go to
/// 127.0.0.1:`port`: task `broken` runs `command` (the content of a TOML basic string);
/// `[defaults]`: success cooldown 1 h, fail cooldown `fail_cooldown`, stop_grace 0 s,
/// kill_grace 200 ms, then `more_defaults`.
pub fn broken_host(
    pg: &Pg,
    name: &str,
    url: &str,
    port: u16,
    fail_cooldown: &str,
    more_defaults: &str,
    command: &str,
) -> TestEnv {
    crate::fleet::host_env(
        pg,
        name,
        url,
        "2s",
        &format!(
            r#"{email}
[defaults]
success_cooldown = "1h"
fail_cooldown = "{fail_cooldown}"
stop_grace = "0s"
kill_grace = "200ms"
{more_defaults}

[tasks.broken]
command = "{command}"
"#,
            email = email_table(port)
        ),
    )
}
