//! Delivering one built mail: SMTP (lettre), `sendmail`, or an `.eml` file.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::authentication::DEFAULT_MECHANISMS;
use lettre::transport::smtp::client::SmtpConnection;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

use crate::config::{Email, TlsMode};

use super::build::mailboxes;
use crate::store::outbox::write_into_place;

/// PIDs of the mailer's own children (sendmail), which the chain must not take for a
/// run's leftovers. The chain holds the lock while it looks at its children; the
/// mailer holds it from before a spawn until the PID is in the set.
pub(crate) type Children = Arc<Mutex<BTreeSet<i32>>>;

/// Why a delivery failed. The message is a lowercase fragment that reads after "failed to
/// send: " and names the transport once (the SMTP server as `smtp://host:port`, never with
/// a user or password; sendmail by its path): `mail-test` prints it, and the mailer thread
/// logs it, word for word.
#[derive(Debug)]
pub(crate) enum SendError {
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
pub(crate) struct SmtpUrl {
    pub(crate) implicit_tls: bool,
    pub(crate) user: Option<String>,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl std::fmt::Display for SmtpUrl {
    /// `smtp://host:port` (or `smtps://`, `[...]` around an IPv6 address): how the server is
    /// named in messages. Never the user: with it, a password put in the URL could show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.implicit_tls { "smtps" } else { "smtp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn parse_smtp_url(url: &str) -> Option<SmtpUrl> {
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

/// How long a delivery may wait for the SMTP server, in all: connecting, the greeting and
/// every answer after it share this one budget, so that a server that goes silent costs
/// one timeout, not one per step (nor a second one for the QUIT after it).
pub(crate) const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long we wait for the answer to our QUIT (after a delivery, or a refusal).
const QUIT_WAIT: Duration = Duration::from_secs(5);

/// The step of the SMTP dialogue that failed, as messages name it ("(during DATA)").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Resolving the host and opening the TCP connection.
    Connect,
    /// The server's greeting (for `smtps://`, with the TLS handshake before it).
    Greeting {
        tls: bool,
    },
    /// The EHLO that follows the greeting.
    Ehlo,
    /// The greeting or the EHLO: lettre's `SmtpConnection::connect` does both and does not
    /// say which one failed (a timeout is told apart by its duration, see `hello_phase`).
    Hello {
        tls: bool,
    },
    /// STARTTLS, the TLS handshake, and the EHLO over TLS after it.
    Starttls,
    Auth,
    MailFrom,
    RcptTo,
    /// The DATA command, the message, and the server's answer to its final dot.
    Data,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Greeting { tls: false } => "the greeting",
            Phase::Greeting { tls: true } => "the TLS handshake or the greeting",
            Phase::Ehlo => "EHLO",
            Phase::Hello { tls: false } => "the greeting or EHLO",
            Phase::Hello { tls: true } => "the TLS handshake, the greeting or EHLO",
            Phase::Starttls => "STARTTLS",
            Phase::Auth => "AUTH",
            Phase::MailFrom => "MAIL FROM",
            Phase::RcptTo => "RCPT TO",
            Phase::Data => "DATA",
        })
    }
}

/// What went wrong in a step, as far as the user is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No answer in time. A socket read timeout comes out of lettre as an I/O error
    /// EAGAIN/EWOULDBLOCK ("Resource temporarily unavailable (os error 11)"), a connect
    /// timeout as ETIMEDOUT: both are this.
    TimedOut,
    /// The server answered with a 4xx (`permanent: false`) or a 5xx.
    Refused {
        code: String,
        text: String,
        permanent: bool,
    },
    /// The server closed the connection.
    Closed,
    /// Anything else (connection refused, a TLS error, a local check), in the words of the
    /// OS, of rustls or of lettre.
    Other(String),
}

/// What a lettre SMTP error means for the user.
fn failure_of(e: &lettre::transport::smtp::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                return Failure::TimedOut;
            }
        }
        source = err.source();
    }
    let detail = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
    if let Some(code) = e.status() {
        return Failure::Refused {
            code: code.to_string(),
            text: detail,
            permanent: e.is_permanent(),
        };
    }
    if e.is_response() && detail == "incomplete response" {
        return Failure::Closed;
    }
    Failure::Other(detail)
}

/// The phase of a failed `SmtpConnection::connect` (TCP connect, greeting, EHLO), given how
/// long after the TCP connection was made it failed (None: no connection was made).
///
/// After a failed EHLO, lettre sends QUIT and waits for its answer with the same timeout,
/// so an EHLO that timed out comes back after two timeouts at least (unless the server
/// ignores EHLO but answers QUIT, which no server does); a greeting that timed out comes
/// back after one.
fn hello_phase(
    since_connected: Option<Duration>,
    failure: &Failure,
    timeout: Duration,
    tls: bool,
) -> Phase {
    match since_connected {
        None => Phase::Connect,
        Some(d) if *failure == Failure::TimedOut => {
            if d < timeout * 3 / 2 {
                Phase::Greeting { tls }
            } else {
                Phase::Ehlo
            }
        }
        Some(_) => Phase::Hello { tls },
    }
}

/// The message for a failed step with `server` (`smtp://host:port`).
fn describe(server: &str, phase: Phase, failure: &Failure, timeout: Duration) -> SendError {
    match failure {
        Failure::TimedOut => SendError::Transient(format!(
            "timed out after {} s waiting for {server} (during {phase})",
            timeout.as_secs()
        )),
        Failure::Refused {
            code,
            text,
            permanent,
        } => {
            let m = format!("{server} answered {code} {text} (during {phase})");
            if *permanent {
                SendError::Permanent(m)
            } else {
                SendError::Transient(m)
            }
        }
        Failure::Closed => {
            SendError::Transient(format!("{server} closed the connection (during {phase})"))
        }
        Failure::Other(d) if phase == Phase::Connect => {
            SendError::Transient(format!("cannot connect to {server}: {d}"))
        }
        Failure::Other(d) => {
            SendError::Transient(format!("error talking to {server} (during {phase}): {d}"))
        }
    }
}

/// The server's address as lettre's `SmtpConnection::connect` takes it, telling us whether
/// and when the TCP connection was made: lettre walks the resolved addresses and returns
/// from inside that walk, dropping the iterator, as soon as one connects; if none does, it
/// walks them to the end first.
struct ServerAddr<'a> {
    host: &'a str,
    port: u16,
    connected: &'a std::cell::Cell<Option<Instant>>,
}

struct ServerAddrs<'a> {
    addrs: std::vec::IntoIter<std::net::SocketAddr>,
    exhausted: bool,
    connected: &'a std::cell::Cell<Option<Instant>>,
}

impl<'a> std::net::ToSocketAddrs for ServerAddr<'a> {
    type Iter = ServerAddrs<'a>;
    fn to_socket_addrs(&self) -> std::io::Result<ServerAddrs<'a>> {
        let addrs: Vec<_> = (self.host, self.port).to_socket_addrs()?.collect();
        Ok(ServerAddrs {
            addrs: addrs.into_iter(),
            exhausted: false,
            connected: self.connected,
        })
    }
}

impl Iterator for ServerAddrs<'_> {
    type Item = std::net::SocketAddr;
    fn next(&mut self) -> Option<std::net::SocketAddr> {
        let next = self.addrs.next();
        self.exhausted = next.is_none();
        next
    }
}

impl Drop for ServerAddrs<'_> {
    fn drop(&mut self) {
        if !self.exhausted {
            self.connected.set(Some(Instant::now()));
        }
    }
}

/// An SMTP connection past its greeting and EHLO, and what is left of the time budget.
struct Dialogue {
    conn: SmtpConnection,
    deadline: Instant,
}

type StepResult<T> = Result<T, (Phase, Failure)>;

impl Dialogue {
    /// Runs one step of the dialogue with what is left of the time budget. `waits`: how many
    /// times in a row the step may wait for an answer when the server is silent (2 where
    /// lettre sends QUIT after a failure and waits for its answer), so that together they
    /// stay within the budget.
    fn step<T>(
        &mut self,
        phase: Phase,
        waits: u32,
        f: impl FnOnce(&mut SmtpConnection) -> Result<T, lettre::transport::smtp::Error>,
    ) -> StepResult<T> {
        let left = self.deadline.saturating_duration_since(Instant::now()) / waits;
        if left < Duration::from_millis(1) {
            return Err((phase, Failure::TimedOut));
        }
        self.conn
            .set_timeout(Some(left))
            .map_err(|e| (phase, Failure::Other(e.to_string())))?;
        f(&mut self.conn).map_err(|e| (phase, failure_of(&e)))
    }

    /// Says QUIT and waits a little for the answer (within the budget), then closes.
    fn quit(mut self) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let wait = left.min(QUIT_WAIT);
        if wait >= Duration::from_millis(1) && self.conn.set_timeout(Some(wait)).is_ok() {
            self.conn.abort();
        }
    }
}

/// The TLS parameters for `host`: the system's roots, plus `ca_file` if given.
fn tls_parameters(email: &Email, host: &str) -> Result<TlsParameters, SendError> {
    let mut params = TlsParameters::builder(host.to_string());
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
    params
        .build_rustls()
        .map_err(|e| SendError::Permanent(format!("TLS setup for {host}: {e}")))
}

/// Send `bytes` to `url` as lettre's `SmtpTransport::send_raw` would (the same TLS: implicit
/// for smtps://, STARTTLS as `tls` says; the same AUTH mechanisms, SMTPUTF8 and 8BITMIME
/// rules), but one step at a time, so that a failure names its step, and within one time
/// budget (`SMTP_TIMEOUT`). No QUIT after a timeout: the server is not listening.
fn send_smtp(
    email: &Email,
    url: &str,
    envelope: &Envelope,
    bytes: &[u8],
) -> Result<String, SendError> {
    let u = parse_smtp_url(url).ok_or_else(|| {
        SendError::Permanent("email.smtp is not an smtp:// or smtps:// URL".into())
    })?;
    let server = u.to_string();
    let params = tls_parameters(email, &u.host)?;
    let credentials = match &u.user {
        Some(user) => Some(Credentials::new(
            user.clone(),
            password(email)?.unwrap_or_default(),
        )),
        None => None,
    };
    let fail = |phase: Phase, failure: &Failure| describe(&server, phase, failure, SMTP_TIMEOUT);

    let hello = ClientId::default();
    let started = Instant::now();
    let connected = std::cell::Cell::new(None);
    let addr = ServerAddr {
        host: &u.host,
        port: u.port,
        connected: &connected,
    };
    let wrapper = u.implicit_tls.then_some(&params);
    let conn =
        SmtpConnection::connect(addr, Some(SMTP_TIMEOUT), &hello, wrapper, None).map_err(|e| {
            let failure = failure_of(&e);
            let since = connected.get().map(|t| t.elapsed());
            fail(
                hello_phase(since, &failure, SMTP_TIMEOUT, u.implicit_tls),
                &failure,
            )
        })?;
    let mut d = Dialogue {
        conn,
        deadline: started + SMTP_TIMEOUT,
    };
    let starttls = (!u.implicit_tls).then_some((email.tls, &params));
    match d.send(starttls, &hello, credentials.as_ref(), envelope, bytes) {
        Ok(said) => {
            d.quit();
            Ok(said)
        }
        Err((phase, failure)) => {
            if failure != Failure::TimedOut {
                d.quit();
            }
            Err(fail(phase, &failure))
        }
    }
}

impl Dialogue {
    /// The rest of the dialogue after EHLO: STARTTLS as `starttls` says (None: the connection
    /// is TLS already), AUTH if there are `credentials`, MAIL FROM, RCPT TO, DATA. Ok: the
    /// server's answer to the mail.
    fn send(
        &mut self,
        starttls: Option<(TlsMode, &TlsParameters)>,
        hello: &ClientId,
        credentials: Option<&Credentials>,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> StepResult<String> {
        if let Some((mode, params)) = starttls {
            let offered = self.conn.can_starttls();
            match mode {
                TlsMode::Required if !offered => {
                    return Err((
                        Phase::Starttls,
                        Failure::Other(
                            "the server does not offer STARTTLS, and tls = \"required\"".into(),
                        ),
                    ))
                }
                TlsMode::Required | TlsMode::Opportunistic if offered => {
                    self.step(Phase::Starttls, 2, |c| c.starttls(params, hello))?
                }
                TlsMode::Opportunistic | TlsMode::None | TlsMode::Required => {}
            }
        }
        if let Some(creds) = credentials {
            self.step(Phase::Auth, 2, |c| c.auth(DEFAULT_MECHANISMS, creds))?;
        }
        let mut options = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        let info = self.conn.server_info();
        if non_ascii {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err((
                    Phase::MailFrom,
                    Failure::Other(
                        "the addresses are not ASCII, and the server does not offer SMTPUTF8"
                            .into(),
                    ),
                ));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        if !bytes.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err((
                    Phase::MailFrom,
                    Failure::Other(
                        "the mail is not ASCII, and the server does not offer 8BITMIME".into(),
                    ),
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        self.step(Phase::MailFrom, 1, |c| {
            c.command(Mail::new(envelope.from().cloned(), options))
        })?;
        for to in envelope.to() {
            self.step(Phase::RcptTo, 1, |c| {
                c.command(Rcpt::new(to.clone(), vec![]))
            })?;
        }
        self.step(Phase::Data, 1, |c| c.command(Data))?;
        let resp = self.step(Phase::Data, 1, |c| c.message(bytes))?;
        Ok(format!(
            "{} {}",
            resp.code(),
            resp.message().collect::<Vec<_>>().join(" ")
        ))
    }
}

/// Deliver one built mail through the configured transport. Ok: what the server (or
/// the file system) said.
pub(crate) fn deliver(
    email: &Email,
    run_root: &Path,
    file: &Path,
    bytes: &[u8],
    children: &Children,
) -> Result<String, SendError> {
    let host = crate::sys::hostname();
    let (from, to) = mailboxes(email, &host).map_err(SendError::Permanent)?;
    if let Some(url) = &email.smtp {
        let envelope = Envelope::new(
            Some(from.email.clone()),
            to.iter().map(|m| m.email.clone()).collect(),
        )
        .map_err(|e| SendError::Permanent(format!("envelope: {e}")))?;
        return send_smtp(email, url, &envelope, bytes);
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
    let out = out.map_err(|e| {
        SendError::Transient(format!("cannot run sendmail {}: {e}", sendmail.display()))
    })?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    let failed = || {
        format!(
            "sendmail {} failed ({}){said}",
            sendmail.display(),
            out.status
        )
    };
    match out.status.code() {
        Some(0) => Ok(format!("sendmail accepted it{said}")),
        Some(75) | None => Err(SendError::Transient(failed())),
        Some(_) => Err(SendError::Permanent(failed())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn servers_are_named_by_scheme_host_and_port_only() {
        let name = |u: &str| parse_smtp_url(u).expect("url").to_string();
        assert_eq!(name("smtp://127.0.0.1:2525"), "smtp://127.0.0.1:2525");
        assert_eq!(name("smtp://alice@mail.example"), "smtp://mail.example:25");
        assert_eq!(
            name("smtps://alice@mail.example/"),
            "smtps://mail.example:465"
        );
        assert_eq!(name("smtp://[::1]:587"), "smtp://[::1]:587");
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn a_failed_connect_is_placed_by_whether_and_when_the_tcp_connection_was_made() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        let timed_out = Failure::TimedOut;
        let refused = Failure::Refused {
            code: "554".into(),
            text: "no service".into(),
            permanent: true,
        };
        assert_eq!(hello_phase(None, &timed_out, T, false), Phase::Connect);
        assert_eq!(hello_phase(None, &refused, T, false), Phase::Connect);
        // One timeout after the connection: the greeting never came.
        assert_eq!(
            hello_phase(secs(30), &timed_out, T, false),
            Phase::Greeting { tls: false }
        );
        assert_eq!(
            hello_phase(secs(44), &timed_out, T, true),
            Phase::Greeting { tls: true }
        );
        // Two: the EHLO timed out, then lettre's QUIT after it.
        assert_eq!(hello_phase(secs(45), &timed_out, T, false), Phase::Ehlo);
        assert_eq!(hello_phase(secs(61), &timed_out, T, false), Phase::Ehlo);
        assert_eq!(
            hello_phase(secs(0), &refused, T, false),
            Phase::Hello { tls: false }
        );
        assert_eq!(
            hello_phase(secs(0), &Failure::Closed, T, true).to_string(),
            "the TLS handshake, the greeting or EHLO"
        );
    }

    fn message(phase: Phase, failure: Failure) -> (bool, String) {
        match describe("smtp://127.0.0.1:2525", phase, &failure, T) {
            SendError::Transient(m) => (false, m),
            SendError::Permanent(m) => (true, m),
        }
    }

    #[test]
    fn failures_name_the_server_once_and_the_step() {
        assert_eq!(
            message(Phase::Greeting { tls: false }, Failure::TimedOut),
            (
                false,
                "timed out after 30 s waiting for smtp://127.0.0.1:2525 (during the greeting)"
                    .into()
            )
        );
        assert_eq!(
            message(Phase::Data, Failure::TimedOut).1,
            "timed out after 30 s waiting for smtp://127.0.0.1:2525 (during DATA)"
        );
        assert_eq!(
            message(Phase::Connect, Failure::TimedOut).1,
            "timed out after 30 s waiting for smtp://127.0.0.1:2525 (during connect)"
        );
        assert_eq!(
            message(
                Phase::RcptTo,
                Failure::Refused {
                    code: "550".into(),
                    text: "5.1.1 No such user here".into(),
                    permanent: true
                }
            ),
            (
                true,
                "smtp://127.0.0.1:2525 answered 550 5.1.1 No such user here (during RCPT TO)"
                    .into()
            )
        );
        assert_eq!(
            message(
                Phase::Data,
                Failure::Refused {
                    code: "451".into(),
                    text: "4.3.0 Try again later".into(),
                    permanent: false
                }
            ),
            (
                false,
                "smtp://127.0.0.1:2525 answered 451 4.3.0 Try again later (during DATA)".into()
            )
        );
        assert_eq!(
            message(Phase::Ehlo, Failure::Closed),
            (
                false,
                "smtp://127.0.0.1:2525 closed the connection (during EHLO)".into()
            )
        );
        assert_eq!(
            message(
                Phase::Connect,
                Failure::Other("Connection refused (os error 111)".into())
            )
            .1,
            "cannot connect to smtp://127.0.0.1:2525: Connection refused (os error 111)"
        );
        assert_eq!(
            message(
                Phase::Starttls,
                Failure::Other("invalid peer certificate: UnknownIssuer".into())
            )
            .1,
            "error talking to smtp://127.0.0.1:2525 (during STARTTLS): invalid peer certificate: UnknownIssuer"
        );
    }
}
