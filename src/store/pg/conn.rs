//! One connection to the fleet's database: a current-thread tokio runtime of our own
//! (I/O and timers, no worker thread, no blocking pool) and a tokio-postgres `Client`,
//! whose connection future is spawned on that runtime and driven whenever the owner of
//! the `Conn` runs something on it ([`Conn::run`], which blocks the calling thread: the
//! chain's DB thread, never the driver's loop).
//!
//! Everything below tokio-postgres is ours, so that it is what the lease needs:
//! - the name is resolved with `std::net::ToSocketAddrs` (getaddrinfo) on a short-lived
//!   helper thread, waited for within the connect's timeout ([`resolve`]): getaddrinfo
//!   cannot be interrupted, and a resolver that does not answer must not hold the DB
//!   thread past the lease (a thread left behind ends when the resolver answers; at most
//!   [`MAX_LOOKUPS`] at once). An IP address needs no lookup (no thread). (tokio's
//!   `lookup_host` would need tokio's blocking pool, which this runtime does not have);
//! - the socket is made with socket2: close-on-exec, TCP keepalives (idle lease/5,
//!   interval lease/10, 3 probes) and `TCP_USER_TIMEOUT` lease/2, so that a dead network is
//!   seen by the kernel within the lease even when no statement is waiting;
//! - TLS is negotiated by us (SSLRequest, then rustls through tokio-rustls, chain and host
//!   name verified by `crate::tls`), and the stream is handed to `connect_raw` as if it
//!   were plain: tokio-postgres never sees TLS settings (so it never sends SSLRequest);
//! - when the server is not authenticated by verified TLS, [`super::guard::AuthGuard`]
//!   refuses cleartext and MD5 password requests before tokio-postgres can answer them.
//!
//! Only unnamed statements go through the client (`query_typed*`, `execute_typed`,
//! `simple_query`, `batch_execute`): named ones break PgBouncer's transaction pooling.
//! clippy.toml forbids the others. No session `SET`, no `options` startup parameter.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use super::guard::{AuthGuard, Refusal};
use crate::config::{FleetConfig, FleetTls, PgHost};

/// Why a connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnError {
    /// The config is wrong for this server (exit 78 at launch): wrong password, TLS refused
    /// or not verifiable, cleartext/MD5 refused, no such database or role, not run-chain's
    /// database.
    Refused(String),
    /// Try again later: network, server down or starting, timeout, too many connections.
    Unreachable(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Refused(m) | ConnError::Unreachable(m) => f.write_str(m),
        }
    }
}

/// Why a statement failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DbError {
    /// No answer within the client-side timeout: the connection should be dropped (an
    /// answer may still come, to a statement nobody waits for).
    Timeout,
    /// The connection is gone.
    Closed(String),
    /// The server refused the statement: its SQLSTATE and message.
    Sql { code: String, message: String },
    /// Anything else (a protocol or conversion error).
    Other(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Timeout => f.write_str("no answer from the database in time"),
            DbError::Closed(m) => write!(f, "the connection is closed: {m}"),
            DbError::Sql { code, message } => write!(f, "{message} (SQLSTATE {code})"),
            DbError::Other(m) => f.write_str(m),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        if let Some(db) = e.as_db_error() {
            return DbError::Sql {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
            };
        }
        if e.is_closed() {
            return DbError::Closed(e.to_string());
        }
        DbError::Other(error_text(&e))
    }
}

/// How the fleet's thread words a failed statement `m` ([`DbError`]'s text): a permission
/// error (SQLSTATE 42501) is the database refusing us, not the database unreachable.
pub(crate) fn trouble(m: &str) -> String {
    if m.contains("(SQLSTATE 42501)") {
        format!("the database refused: {m}")
    } else {
        format!("database unreachable: {m}")
    }
}

/// An error with its sources, on one line.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The byte stream under tokio-postgres.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

/// At most this many name lookups left running (past their connect's timeout) at once;
/// another connect then fails at once instead of starting one more thread.
pub(crate) const MAX_LOOKUPS: usize = 4;

/// The lookups running now (see [`MAX_LOOKUPS`]).
static LOOKUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The addresses of `host` (a name or an IP address) at `port`, within `timeout`; the
/// error names the host.
fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = host.to_string();
    lookup_within(timeout, &LOOKUPS, move || {
        (name.as_str(), port).to_socket_addrs().map(|a| a.collect())
    })
    .map_err(|e| match e {
        Lookup::Failed(e) => format!("cannot resolve {host}: {e}"),
        Lookup::TimedOut => format!(
            "cannot resolve {host}: no answer from the resolver within {}",
            crate::config::fmt_duration(timeout)
        ),
        Lookup::Busy => format!(
            "cannot resolve {host}: {MAX_LOOKUPS} earlier lookups have not been answered yet"
        ),
        Lookup::NoThread(e) => format!("cannot resolve {host}: cannot start a thread: {e}"),
    })
}

/// Why [`lookup_within`] gave no addresses.
#[derive(Debug)]
enum Lookup {
    Failed(io::Error),
    /// No answer within the time (the lookup goes on, on its thread).
    TimedOut,
    /// [`MAX_LOOKUPS`] are running already.
    Busy,
    NoThread(io::Error),
}

/// Run `lookup` on a thread of its own and wait for it at most `timeout`; `running`
/// counts the lookups not finished (a thread left behind counts until it finishes).
fn lookup_within(
    timeout: Duration,
    running: &'static std::sync::atomic::AtomicUsize,
    lookup: impl FnOnce() -> io::Result<Vec<SocketAddr>> + Send + 'static,
) -> Result<Vec<SocketAddr>, Lookup> {
    use std::sync::atomic::Ordering;
    if running.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
        running.fetch_sub(1, Ordering::AcqRel);
        return Err(Lookup::Busy);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("run-chain-dns".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let r = lookup();
            running.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        running.fetch_sub(1, Ordering::AcqRel);
        return Err(Lookup::NoThread(e));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(Lookup::Failed(e)),
        Err(_) => Err(Lookup::TimedOut),
    }
}

#[cfg(test)]
mod resolve_tests {
    //! The lookup's deadline, with lookups that answer when the test says (no resolver).
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// A lookup that answers `r` once `go` is sent to (or dropped).
    fn held(
        go: mpsc::Receiver<()>,
        r: io::Result<Vec<SocketAddr>>,
    ) -> impl FnOnce() -> io::Result<Vec<SocketAddr>> + Send + 'static {
        move || {
            let _ = go.recv();
            r
        }
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 5432))
    }

    fn settle(n: &AtomicUsize, want: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while n.load(Ordering::Acquire) != want && Instant::now() < until {
            std::thread::yield_now();
        }
        assert_eq!(n.load(Ordering::Acquire), want);
    }

    #[test]
    fn an_answer_in_time_is_returned_and_a_late_one_times_out() {
        static N: AtomicUsize = AtomicUsize::new(0);
        let (go, rx) = mpsc::channel();
        go.send(()).expect("send");
        assert_eq!(
            lookup_within(Duration::from_secs(10), &N, held(rx, Ok(vec![addr()]))).ok(),
            Some(vec![addr()])
        );
        settle(&N, 0);
        let (go, rx) = mpsc::channel::<()>();
        let started = Instant::now();
        let r = lookup_within(Duration::from_millis(100), &N, held(rx, Ok(vec![addr()])));
        assert!(matches!(r, Err(Lookup::TimedOut)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The thread left behind counts until its lookup answers.
        assert_eq!(N.load(Ordering::Acquire), 1);
        drop(go);
        settle(&N, 0);
        let (go, rx) = mpsc::channel();
        go.send(()).expect("send");
        let r = lookup_within(
            Duration::from_secs(10),
            &N,
            held(rx, Err(io::Error::other("no such host"))),
        );
        assert!(matches!(r, Err(Lookup::Failed(_))), "{r:?}");
    }

    #[test]
    fn no_more_than_max_lookups_are_left_running() {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut gos = Vec::new();
        for _ in 0..MAX_LOOKUPS {
            let (go, rx) = mpsc::channel::<()>();
            gos.push(go);
            let r = lookup_within(Duration::from_millis(1), &N, held(rx, Ok(vec![])));
            assert!(matches!(r, Err(Lookup::TimedOut)), "{r:?}");
        }
        let (_go, rx) = mpsc::channel::<()>();
        let started = Instant::now();
        let r = lookup_within(Duration::from_secs(10), &N, held(rx, Ok(vec![])));
        assert!(matches!(r, Err(Lookup::Busy)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(gos);
        settle(&N, 0);
    }

    #[test]
    fn an_ip_address_is_not_looked_up() {
        assert_eq!(resolve("192.0.2.1", 5432, Duration::ZERO), Ok(vec![addr()]));
        let e = resolve("::1", 5432, Duration::ZERO).map(|a| a.len());
        assert_eq!(e, Ok(1));
    }
}

/// An open connection (see the module's doc).
pub(crate) struct Conn {
    // Dropped first: the client, then the runtime (which drops the connection task).
    client: tokio_postgres::Client,
    rt: tokio::runtime::Runtime,
    /// Whether the server was authenticated by verified TLS.
    tls: bool,
    /// The URL as shown (no secret).
    shown: String,
}

impl Conn {
    /// Connect as `cfg` says, all of it within `timeout` (the name's resolution
    /// included).
    pub(crate) fn connect(cfg: &FleetConfig, timeout: Duration) -> Result<Conn, ConnError> {
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| ConnError::Unreachable(format!("cannot start the I/O runtime: {e}")))?;
        let shown = &cfg.display_url;
        let addrs = match &cfg.url.host {
            PgHost::Tcp(h) => Some(
                resolve(h, cfg.url.port, timeout)
                    .map_err(|e| ConnError::Unreachable(format!("{shown}: {e}")))?,
            ),
            PgHost::Unix(_) => None,
        };
        let left = timeout.saturating_sub(started.elapsed());
        let fut = async {
            let (stream, verified) = open(cfg, addrs.as_deref(), left).await?;
            let mut pg = tokio_postgres::Config::new();
            pg.user(&cfg.url.user)
                .dbname(&cfg.url.dbname)
                .application_name("run-chain")
                .ssl_mode(SslMode::Disable);
            if let Some(p) = &cfg.password {
                pg.password(p.expose());
            }
            let guard = AuthGuard::new(stream, !verified);
            let (client, connection) = pg
                .connect_raw(guard, NoTls)
                .await
                .map_err(|e| classify(&e, shown))?;
            Ok::<_, ConnError>((client, connection, verified))
        };
        let (client, connection, tls) =
            match rt.block_on(async { tokio::time::timeout(left, fut).await }) {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ConnError::Unreachable(format!(
                        "no answer from {shown} within {}",
                        crate::config::fmt_duration(timeout)
                    )))
                }
            };
        let said = shown.clone();
        let mut connection = connection;
        rt.spawn(async move {
            // Ends when the client is dropped or the server goes: `is_closed` then says so.
            // The server's NOTICE/WARNING messages (tokio-postgres would log them raw, at
            // info, without the chain's name): at debug, naming the database. What they
            // announce (a shutdown, a dropped connection) the fleet's thread logs itself.
            while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                        log::debug!(
                            "{said}: the database says {}: {}",
                            n.severity(),
                            n.message()
                        )
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        Ok(Conn {
            client,
            rt,
            tls,
            shown: shown.clone(),
        })
    }

    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// Whether the server was authenticated by verified TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }

    /// Drive `f` (which uses [`Conn::client`]) to its end on this thread, for at most
    /// `timeout`. After [`DbError::Timeout`] drop the connection: the statement may still
    /// be answered, to nobody.
    pub(crate) fn run<F, T>(&self, timeout: Duration, f: F) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, f).await })
        {
            Ok(r) => r.map_err(DbError::from),
            Err(_) => Err(DbError::Timeout),
        }
    }

    /// The URL as shown in messages: `user@host:port/db`.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    #[allow(dead_code)] // used by the lease's DB thread (another branch of this stage)
    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// Sort a failed connect: what the user must fix (Refused) from what may pass (Unreachable).
fn classify(e: &tokio_postgres::Error, shown: &str) -> ConnError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let text = format!("{shown}: {} (SQLSTATE {code})", db.message());
        // 28: invalid authorization (wrong password, no such role, pg_hba rejects);
        // 3D000: no such database; 42501: no CONNECT privilege.
        return if code.starts_with("28") || code == "3D000" || code == "42501" {
            ConnError::Refused(text)
        } else {
            ConnError::Unreachable(text)
        };
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<Refusal>()) {
                return ConnError::Refused(format!("{shown}: {r}"));
            }
        }
        cur = c.source();
    }
    let text = error_text(e);
    // tokio-postgres' own authentication errors: no password configured for a server that
    // asks for one, a SCRAM exchange whose server proof is wrong, an unsupported method.
    if text.contains("authentication") || text.contains("password missing") {
        return ConnError::Refused(format!("{shown}: {text}"));
    }
    ConnError::Unreachable(format!("{shown}: {text}"))
}

/// The socket, made as the module's doc says.
fn tcp_socket(addr: &SocketAddr, cfg: &FleetConfig) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
    let sock = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.set_cloexec(true)?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    let secs = |d: Duration| d.max(Duration::from_secs(1));
    let ka = TcpKeepalive::new()
        .with_time(secs(cfg.lease / 5))
        .with_interval(secs(cfg.lease / 10))
        .with_retries(3);
    sock.set_tcp_keepalive(&ka)?;
    sock.set_tcp_user_timeout(Some(cfg.lease / 2))?;
    Ok(sock)
}

/// Open the byte stream and do TLS as `cfg.tls` says: the stream, and whether the server
/// was authenticated by verified TLS.
async fn open(
    cfg: &FleetConfig,
    addrs: Option<&[SocketAddr]>,
    timeout: Duration,
) -> Result<(Stream, bool), ConnError> {
    let shown = &cfg.display_url;
    let Some(addrs) = addrs else {
        let path = cfg.url.socket_path().unwrap_or_default();
        let s = UnixStream::connect(&path).await.map_err(|e| {
            ConnError::Unreachable(format!(
                "cannot connect to {shown} (socket {}): {e}",
                path.display()
            ))
        })?;
        return Ok((Stream::Unix(s), false));
    };
    if addrs.is_empty() {
        return Err(ConnError::Unreachable(format!(
            "{shown}: the host name has no address"
        )));
    }
    // Each address in turn, each with an equal share of the time (at least 1 s).
    let each = (timeout / addrs.len() as u32).max(Duration::from_secs(1));
    let mut last = None;
    let mut tcp = None;
    for a in addrs {
        let sock = tcp_socket(a, cfg)
            .map_err(|e| ConnError::Unreachable(format!("cannot make a socket for {a}: {e}")))?;
        let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
        match tokio::time::timeout(each, sock.connect(*a)).await {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(e)) => last = Some(format!("{a}: {e}")),
            Err(_) => {
                last = Some(format!(
                    "{a}: no answer within {}",
                    crate::config::fmt_duration(each)
                ))
            }
        }
    }
    let Some(mut tcp) = tcp else {
        return Err(ConnError::Unreachable(format!(
            "cannot connect to {shown}: {}",
            last.unwrap_or_default()
        )));
    };
    if cfg.tls == FleetTls::None {
        return Ok((Stream::Tcp(tcp), false));
    }
    // SSLRequest: length 8, code 80877103; the answer is one byte, 'S' or 'N'.
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&8i32.to_be_bytes());
    req[4..].copy_from_slice(&80_877_103i32.to_be_bytes());
    let io_err = |e: io::Error| ConnError::Unreachable(format!("{shown}: {e}"));
    tcp.write_all(&req).await.map_err(io_err)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io_err)?;
    match answer[0] {
        b'S' => {}
        b'N' if cfg.tls == FleetTls::Opportunistic => return Ok((Stream::Tcp(tcp), false)),
        b'N' => {
            return Err(ConnError::Refused(format!(
                "{shown}: the server does not offer TLS, and tls = \"required\" (turn ssl on in the server, or set tls = \"opportunistic\" or \"none\")"
            )))
        }
        other => {
            return Err(ConnError::Refused(format!(
                "{shown}: the server answered TLS negotiation with {other:#04x}: not a PostgreSQL server?"
            )))
        }
    }
    let PgHost::Tcp(host) = &cfg.url.host else {
        return Err(ConnError::Refused(format!(
            "{shown}: no TLS over a Unix socket"
        )));
    };
    let tls = crate::tls::connect(cfg.ca_file.as_deref(), host, tcp)
        .await
        .map_err(|e| match e {
            crate::tls::TlsError::Refused(m) => ConnError::Refused(format!("{shown}: {m}")),
            crate::tls::TlsError::Io(m) => ConnError::Unreachable(format!("{shown}: {m}")),
        })?;
    Ok((Stream::Tls(Box::new(tls)), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_error_is_worded_as_a_refusal() {
        let denied = DbError::Sql {
            code: "42501".into(),
            message: "permission denied for table standbys".into(),
        };
        assert_eq!(
            trouble(&denied.to_string()),
            "the database refused: permission denied for table standbys (SQLSTATE 42501)"
        );
        assert_eq!(
            trouble(&DbError::Timeout.to_string()),
            "database unreachable: no answer from the database in time"
        );
    }
}
