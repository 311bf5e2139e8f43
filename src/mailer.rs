//! Alert mails: building them, the durable outbox, and the mailer thread.
//!
//! An alert is written, complete (RFC 5322, with its Message-ID fixed when the alert
//! was decided), to `RUN_ROOT/outbox/` before anything tries to send it: a file, not the
//! record store, so that a store fault cannot lose it. The mailer thread (the one
//! helper thread of a chain process) delivers the outbox in order: it claims a file
//! with `flock` (so the old and the new instance never both send one alert during a
//! hand-over), sends it, and removes it. A temporary failure (an SMTP 4xx, a connection
//! that fails or times out) is retried with a backoff; a permanent one (5xx) is logged
//! and the file moved to `outbox/failed/`. The chain never waits for the mailer, and an
//! exit never waits for it: whatever is unsent stays in the outbox for the next
//! instance. A crash between the server's acceptance and the file's removal sends the
//! mail again, with the same Message-ID.
//!
//! Transports: SMTP (lettre; STARTTLS when offered or required, implicit TLS for
//! `smtps://`, a private CA, AUTH with the password from a file or a variable),
//! `sendmail` (spawned by us, so that its PID can be kept out of the run's leftovers),
//! or, with neither, `.eml` files moved into `RUN_ROOT/mail/`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, Message, SmtpTransport, Transport};

use crate::config::{Email, TlsMode};

/// PIDs of the mailer's own children (sendmail), which the chain must not take for a
/// run's leftovers. The chain holds the lock while it looks at its children; the
/// mailer holds it from before a spawn until the PID is in the set.
pub type Children = Arc<Mutex<BTreeSet<i32>>>;

/// What an alert says. The wording (subject, body) is [`crate::alert_mail`]'s.
#[derive(Debug, Clone, Default)]
pub struct AlertMail {
    pub kind: String,
    pub chain: String,
    pub task: String,
    pub host: String,
    pub command: String,
    /// The streak's last failed run: its id, outcome ("failed (exit code 1)"), the
    /// outcome in brief ("exit 1"), its last line of output, its start and duration.
    pub run_id: Option<u64>,
    pub outcome: String,
    pub brief: String,
    pub last_line: String,
    pub started: String,
    pub duration: String,
    pub streak_start: String,
    /// How long the streak has lasted (for `recovered`: its whole length).
    pub streak_length: String,
    pub streak_ms: u64,
    pub failures: u64,
    pub next_attempt: String,
    pub held_back: u64,
    /// The tail of the last failed run's output, and how many bytes it printed.
    pub output: Vec<u8>,
    pub output_bytes: u64,
    /// Why the output is missing, when it could not be had.
    pub output_note: Option<String>,
    /// For `recovered`: the run that succeeded.
    pub recovered_by: Option<String>,
    /// When the alert was decided (Unix ms).
    pub at_ms: u64,
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// A Message-ID for an alert decided now.
pub fn message_id(a: &AlertMail) -> String {
    let mut rnd = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut rnd);
    }
    let r: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    let host: String = clean(&a.host)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .collect();
    let host = if host.is_empty() {
        "localhost".into()
    } else {
        host
    };
    format!("<{}.{}.{}.{}.{r}@{host}>", a.at_ms, a.chain, a.task, a.kind)
}

fn header(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), clean(value))
}

/// The sender and recipients of `email`.
fn mailboxes(email: &Email, host: &str) -> Result<(Mailbox, Vec<Mailbox>), String> {
    let from_s = email
        .from
        .clone()
        .unwrap_or_else(|| format!("run-chain@{}", clean(host)));
    let from: Mailbox = from_s
        .parse::<Address>()
        .map(|a| Mailbox::new(Some("run-chain".into()), a))
        .map_err(|e| format!("email.from {from_s:?}: {e}"))?;
    let to = email
        .to
        .iter()
        .map(|t| {
            t.parse::<Address>()
                .map(|a| Mailbox::new(None, a))
                .map_err(|e| format!("email.to {t:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((from, to))
}

/// Build the mail of an alert. Task output only ever reaches the body, and lettre
/// encodes the body (quoted-printable or base64), so output cannot forge a header;
/// invalid UTF-8 is replaced, never passed on raw.
pub fn build(email: &Email, a: &AlertMail, message_id: &str) -> Result<Vec<u8>, String> {
    let (from, to) = mailboxes(email, &a.host)?;
    let subject = clean(&crate::alert_mail::subject(a));
    let body = crate::alert_mail::body(a);
    let mut b = Message::builder()
        .message_id(Some(message_id.to_string()))
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .raw_header(header("X-Run-Chain-Alert", &a.kind))
        .raw_header(header("X-Run-Chain-Task", &a.task))
        .raw_header(header("X-Run-Chain-Chain", &a.chain));
    for t in to {
        b = b.to(t);
    }
    b.body(body)
        .map(|m| m.formatted())
        .map_err(|e| format!("cannot build the alert mail: {e}"))
}

/// The outbox folder.
pub fn outbox(run_root: &Path) -> PathBuf {
    run_root.join("outbox")
}

/// Store a built mail in the outbox (atomically, mode 0600). Returns its path.
pub fn enqueue(run_root: &Path, a: &AlertMail, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let dir = outbox(run_root);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let name = format!(
        "{:013}-{}-{}-{}-{}.eml",
        a.at_ms,
        a.chain,
        a.task,
        a.kind,
        std::process::id()
    );
    let path = dir.join(&name);
    write_into_place(&dir, &name, bytes, true)?;
    Ok(path)
}

/// Write `bytes` to `dir/name` under a dot name with mode 0600 from the start (synced
/// first if `sync`), then rename it into place: a reader of the folder never sees a
/// half-written mail, nor one readable by others. The temporary file is removed on error.
fn write_into_place(dir: &Path, name: &str, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

use std::os::unix::fs::DirBuilderExt;

/// Why a delivery failed.
#[derive(Debug)]
pub enum SendError {
    /// Try again later (4xx, connection refused or timed out, sendmail EX_TEMPFAIL).
    Transient(String),
    /// Never (5xx, a bad address, a bad config).
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(m) => write!(f, "{m} (will retry)"),
            SendError::Permanent(m) => write!(f, "{m} (permanent)"),
        }
    }
}

/// A parsed `smtp://[user@]host[:port]` or `smtps://...` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub implicit_tls: bool,
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

pub fn parse_smtp_url(url: &str) -> Option<SmtpUrl> {
    let (implicit_tls, rest) = if let Some(r) = url.strip_prefix("smtps://") {
        (true, r)
    } else {
        (false, url.strip_prefix("smtp://")?)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, hp)) => (Some(u.to_string()), hp),
        None => (None, rest),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']')?;
        (h.to_string(), p.strip_prefix(':').map(str::to_string))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None if implicit_tls => 465,
        None => 25,
    };
    Some(SmtpUrl {
        implicit_tls,
        user,
        host,
        port,
    })
}

fn password(email: &Email) -> Result<Option<String>, SendError> {
    if let Some(f) = &email.password_file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            SendError::Transient(format!("cannot read password_file {}: {e}", f.display()))
        })?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    if let Some(v) = &email.password_env {
        return match std::env::var(v) {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(SendError::Permanent(format!(
                "password_env {v} is not set in run-chain's environment"
            ))),
        };
    }
    Ok(None)
}

/// An SMTP transport for `email` (smtp must be set).
fn smtp_transport(email: &Email, url: &str) -> Result<SmtpTransport, SendError> {
    let u = parse_smtp_url(url)
        .ok_or_else(|| SendError::Permanent(format!("email.smtp: cannot parse {url:?}")))?;
    let mut params = TlsParameters::builder(u.host.clone());
    if let Some(ca) = &email.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            SendError::Transient(format!("cannot read ca_file {}: {e}", ca.display()))
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            SendError::Permanent(format!(
                "ca_file {}: not a PEM certificate: {e}",
                ca.display()
            ))
        })?;
        params = params.add_root_certificate(cert);
    }
    let params = params
        .build_rustls()
        .map_err(|e| SendError::Permanent(format!("TLS setup: {e}")))?;
    let tls = if u.implicit_tls {
        Tls::Wrapper(params)
    } else {
        match email.tls {
            TlsMode::Opportunistic => Tls::Opportunistic(params),
            TlsMode::Required => Tls::Required(params),
            TlsMode::None => Tls::None,
        }
    };
    let mut b = SmtpTransport::builder_dangerous(u.host.as_str())
        .port(u.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if let Some(user) = &u.user {
        let pw = password(email)?.unwrap_or_default();
        b = b.credentials(Credentials::new(user.clone(), pw));
    }
    Ok(b.build())
}

/// Deliver one built mail through the configured transport. Ok: what the server (or
/// the file system) said.
pub fn deliver(
    email: &Email,
    run_root: &Path,
    file: &Path,
    bytes: &[u8],
    children: &Children,
) -> Result<String, SendError> {
    let host = crate::sys::hostname();
    let (from, to) = mailboxes(email, &host).map_err(SendError::Permanent)?;
    if let Some(url) = &email.smtp {
        let t = smtp_transport(email, url)?;
        let envelope = lettre::address::Envelope::new(
            Some(from.email.clone()),
            to.iter().map(|m| m.email.clone()).collect(),
        )
        .map_err(|e| SendError::Permanent(format!("envelope: {e}")))?;
        return match t.send_raw(&envelope, bytes) {
            Ok(resp) => Ok(format!(
                "{} {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("SMTP {url}: {e}"))),
            Err(e) => Err(SendError::Transient(format!("SMTP {url}: {e}"))),
        };
    }
    if let Some(sendmail) = &email.sendmail {
        return send_with_sendmail(sendmail, &from, &to, bytes, children);
    }
    // No transport: the mail is a file in RUN_ROOT/mail/.
    let dir = run_root.join("mail");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| SendError::Transient(format!("cannot create {}: {e}", dir.display())))?;
    let name = file
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("alert.eml"));
    let dest = dir.join(&name);
    write_into_place(&dir, &name.to_string_lossy(), bytes, false)
        .map_err(|e| SendError::Transient(format!("cannot write {}: {e}", dest.display())))?;
    Ok(format!("written to {}", dest.display()))
}

fn send_with_sendmail(
    sendmail: &Path,
    from: &Mailbox,
    to: &[Mailbox],
    bytes: &[u8],
    children: &Children,
) -> Result<String, SendError> {
    let mut cmd = std::process::Command::new(sendmail);
    cmd.arg("-i")
        .arg("-f")
        .arg(&from.email)
        .arg("--")
        .args(to.iter().map(|m| m.email.to_string()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = {
        let mut set = children.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn().map_err(|e| {
            SendError::Transient(format!("cannot run sendmail {}: {e}", sendmail.display()))
        })?;
        set.insert(child.id() as i32);
        child
    };
    let pid = child.id() as i32;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(bytes);
    }
    let out = child.wait_with_output();
    children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pid);
    let out = out.map_err(|e| SendError::Transient(format!("sendmail: {e}")))?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(format!(
            "sendmail accepted it{}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        )),
        Some(75) | None => Err(SendError::Transient(format!(
            "sendmail: {} {said}",
            out.status
        ))),
        Some(_) => Err(SendError::Permanent(format!(
            "sendmail: {} {said}",
            out.status
        ))),
    }
}

/// Messages from the chain to its mailer.
pub enum ToMailer {
    /// Something new is in the outbox.
    Wake,
    /// The config was reloaded.
    Config(Option<Email>),
}

/// Start the mailer thread. It runs until the process exits.
pub fn start(run_root: PathBuf, email: Option<Email>, children: Children) -> Sender<ToMailer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("mailer".into())
        .spawn(move || mailer_loop(run_root, email, children, rx));
    if let Err(e) = spawned {
        log::error!("failed to start the mailer thread: {e}; alerts stay in the outbox");
    }
    tx
}

const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

fn mailer_loop(
    run_root: PathBuf,
    mut email: Option<Email>,
    children: Children,
    rx: Receiver<ToMailer>,
) {
    // file name -> (next attempt, current backoff)
    let mut retry: BTreeMap<String, (Instant, Duration)> = BTreeMap::new();
    let dir = outbox(&run_root);
    loop {
        let now = Instant::now();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.ends_with(".eml") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        retry.retain(|n, _| names.contains(n));
        for name in &names {
            if retry.get(name).is_some_and(|(at, _)| *at > now) {
                // Keep the order: nothing later goes out before this one.
                break;
            }
            let path = dir.join(name);
            let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            else {
                continue;
            };
            // Claim it: another instance may be sending it right now.
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue;
            }
            if !path.exists() {
                continue; // sent and removed by the other instance meanwhile
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Some(cfg) = &email else {
                // No [email] section: nothing is sent; the file stays for inspection.
                continue;
            };
            match deliver(cfg, &run_root, &path, &bytes, &children) {
                Ok(said) => {
                    let _ = std::fs::remove_file(&path);
                    retry.remove(name);
                    log::info!("alert {name} sent: {said}");
                }
                Err(SendError::Permanent(m)) => {
                    let failed = dir.join("failed");
                    let _ = std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&failed);
                    let _ = std::fs::rename(&path, failed.join(name));
                    retry.remove(name);
                    log::error!(
                        "alert {name} could not be delivered: {m}; moved to {}",
                        failed.display()
                    );
                }
                Err(SendError::Transient(m)) => {
                    let back = retry
                        .get(name)
                        .map_or(BACKOFF_FIRST, |(_, b)| (*b * 2).min(BACKOFF_MAX));
                    log::warn!(
                        "alert {name} not delivered yet: {m}; retrying in {}",
                        crate::driver::fmt_dur(back)
                    );
                    retry.insert(name.clone(), (Instant::now() + back, back));
                    // Keep the order: later alerts wait behind this one.
                    break;
                }
            }
            drop(f);
        }
        let wait = retry
            .values()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
            .min();
        let msg = match wait {
            Some(w) => rx.recv_timeout(w),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(ToMailer::Wake) => {
                // A new alert: try the waiting ones again now (they go first), keeping
                // their backoff for the next failure.
                let now = Instant::now();
                for (at, _) in retry.values_mut() {
                    *at = now;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Ok(ToMailer::Config(c)) => {
                email = c;
                retry.clear();
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email {
            to: vec!["admin@example.com".into()],
            from: Some("rc@example.com".into()),
            smtp: None,
            tls: TlsMode::Opportunistic,
            ca_file: None,
            password_file: None,
            password_env: None,
            sendmail: None,
            max_alerts_per_hour: 10,
        }
    }

    fn alert(output: &[u8]) -> AlertMail {
        AlertMail {
            kind: "first-failure".into(),
            chain: "c".into(),
            task: "t".into(),
            host: "h".into(),
            command: "python x.py".into(),
            run_id: Some(7),
            outcome: "failed (exit code 1)".into(),
            brief: "exit 1".into(),
            // As the driver takes it: the last non-empty line, hostile bytes and all.
            last_line: "oops\r\nBcc: victim@evil.example\r\n".into(),
            started: "2026-11-24T00:00:00Z".into(),
            duration: "1.0s".into(),
            streak_start: "2026-11-24T00:00:00Z".into(),
            streak_length: "1m".into(),
            streak_ms: 60_000,
            failures: 1,
            next_attempt: "in 30m".into(),
            output: output.to_vec(),
            output_bytes: output.len() as u64,
            at_ms: 1,
            ..Default::default()
        }
    }

    #[test]
    fn output_never_reaches_a_header() {
        let a = alert(b"oops\r\nBcc: victim@evil.example\r\n\r\nbad \xff\xfe bytes\n");
        let id = message_id(&a);
        let bytes = build(&email(), &a, &id).expect("build");
        let text = String::from_utf8(bytes).expect("the mail is ASCII/UTF-8");
        let (head, _body) = text.split_once("\r\n\r\n").expect("head and body");
        // Unfolded (RFC 5322 2.2.3): a folded line goes on the same header.
        let head = head.replace("\r\n ", " ");
        let names: Vec<String> = head
            .split("\r\n")
            .map(|l| l.split(':').next().unwrap_or("").to_ascii_lowercase())
            .collect();
        assert!(!names.iter().any(|n| n == "bcc"), "{head}");
        assert_eq!(
            names.iter().filter(|n| *n == "subject").count(),
            1,
            "{head}"
        );
        assert!(head.contains("X-Run-Chain-Alert: first-failure"), "{head}");
        assert!(head.contains("X-Run-Chain-Task: t"));
        assert!(head.contains("X-Run-Chain-Chain: c"));
        assert!(head.contains(&format!("Message-ID: {id}")), "{head}");
        assert!(
            head.contains(
                "Subject: [run-chain] h: t in chain c failed (exit 1: oops Bcc: victim@evil.example)"
            ),
            "{head}"
        );
    }

    #[test]
    fn smtp_urls() {
        assert_eq!(
            parse_smtp_url("smtp://127.0.0.1:2525"),
            Some(SmtpUrl {
                implicit_tls: false,
                user: None,
                host: "127.0.0.1".into(),
                port: 2525
            })
        );
        let u = parse_smtp_url("smtps://alice@mail.example").expect("url");
        assert_eq!(
            (u.implicit_tls, u.user.as_deref(), u.port),
            (true, Some("alice"), 465)
        );
        assert_eq!(
            parse_smtp_url("smtp://[::1]:25").map(|u| u.host),
            Some("::1".into())
        );
        assert!(parse_smtp_url("http://x").is_none());
    }
}
