//! The `[store]` section: the fleet's PostgreSQL store, validated.
//!
//! Without `[store]` nothing changes (SQLite in RUN_ROOT). With it, the URL is parsed here
//! once into a [`PgUrl`] that holds no secret: a password in the URL is a config error
//! (78) whose message never repeats it, and the password itself is read from
//! `password_file` (a file only its owner may read) or `password_env` at load, into a
//! [`Secret`] whose `Debug` shows nothing. Everything shown to a user (logs, `check`,
//! `status`) is [`PgUrl::display`]: `user@host:port/db`, no password, no query.
//!
//! The TLS default depends on where the database is: `required` (chain and host name
//! verified) unless it is on loopback or a Unix socket, where it is `none` (and then only
//! SCRAM-SHA-256 is accepted: see `store::pg::guard`).

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{parse_duration, raw::RawStore, Ctx, TlsMode};
use crate::error::Result;

/// The fleet's TLS policy: the same three words as `[email]`'s.
pub type FleetTls = TlsMode;

/// The default lease: how long a dead owner keeps a chain.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// The shortest lease accepted: renewals every lease/5 must fit a round trip and a
/// scheduling hiccup.
pub(crate) const MIN_LEASE: Duration = Duration::from_secs(1);
/// The default port.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// A password, kept out of every `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The password itself: for the authentication exchange only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgHost {
    /// A host name or an IP address (without brackets).
    Tcp(String),
    /// The directory of a Unix socket (`.s.PGSQL.PORT` inside it).
    Unix(PathBuf),
}

/// A parsed `postgresql://` URL, without any secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub user: String,
    pub host: PgHost,
    pub port: u16,
    pub dbname: String,
}

impl PgUrl {
    /// `user@host:port/db` (a Unix socket's directory in place of the host): no password,
    /// no query parameters. For logs, `check` and `status`.
    pub fn display(&self) -> String {
        let host = match &self.host {
            PgHost::Tcp(h) if h.contains(':') => format!("[{h}]"),
            PgHost::Tcp(h) => h.clone(),
            PgHost::Unix(d) => d.display().to_string(),
        };
        format!("{}@{}:{}/{}", self.user, host, self.port, self.dbname)
    }

    /// The URL again, without any secret (it never held one): `postgresql://user@host:port/db`,
    /// a Unix socket's directory as `?host=`. Read back, it is the same URL.
    pub fn to_url(&self) -> String {
        fn enc_with(s: &str, keep: &[u8]) -> String {
            let mut out = String::new();
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        }
        let enc = |s: &str| enc_with(s, b"");
        match &self.host {
            PgHost::Tcp(h) if h.contains(':') => format!(
                "postgresql://{}@[{h}]:{}/{}",
                enc(&self.user),
                self.port,
                enc(&self.dbname)
            ),
            PgHost::Tcp(h) => format!(
                "postgresql://{}@{}:{}/{}",
                enc(&self.user),
                enc(h),
                self.port,
                enc(&self.dbname)
            ),
            PgHost::Unix(d) => format!(
                "postgresql://{}@:{}/{}?host={}",
                enc(&self.user),
                self.port,
                enc(&self.dbname),
                enc_with(&d.display().to_string(), b"/")
            ),
        }
    }

    /// Whether the server is on this host (loopback or a Unix socket): TLS defaults to
    /// `none` there.
    pub fn is_local(&self) -> bool {
        match &self.host {
            PgHost::Unix(_) => true,
            PgHost::Tcp(h) => {
                h.eq_ignore_ascii_case("localhost")
                    || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// The path of the Unix socket, if the server is reached through one.
    pub(crate) fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            PgHost::Unix(d) => Some(d.join(format!(".s.PGSQL.{}", self.port))),
            PgHost::Tcp(_) => None,
        }
    }
}

/// A concurrency group's reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Kernel locks in RUN_ROOT: chains of this host only (the default).
    #[default]
    Host,
    /// Slot rows in the fleet store: chains of every host (needs `[store]`).
    Fleet,
}

impl Scope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Host => "host",
            Scope::Fleet => "fleet",
        }
    }
}

/// The `[store]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The URL, parsed; it holds no password.
    pub url: PgUrl,
    /// `user@host:port/db`: what logs, `check` and `status` show.
    pub display_url: String,
    /// Read at load from `password_file` or `password_env` (None: neither given).
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// The variable that held the password: removed from every task's environment.
    pub password_env: Option<String>,
    /// Resolved: `required` unless the database is on loopback or a Unix socket.
    pub tls: FleetTls,
    /// Whether `tls` was written in the file (else the default by place).
    pub tls_explicit: bool,
    pub ca_file: Option<PathBuf>,
    /// How long a dead owner keeps a chain (>= 1 s, default 10 s).
    pub lease: Duration,
    /// This host's name in the fleet (default: the hostname).
    pub host: String,
}

impl FleetConfig {
    /// A refusal of the database (`m`, from connecting with this config, which came from
    /// `file`) as the user must fix it: the file and section named, and what to do where
    /// the server's words do not say it (no password configured, the password's source,
    /// a certificate of an unknown CA). Exit 78.
    pub(crate) fn refused(&self, file: &Path, m: &str) -> crate::error::Error {
        let f = file.display();
        let m = if m.contains("password missing") {
            format!(
                "{}: the server asks for a password: no password: set password_file or password_env in [store] of {f}",
                self.display_url
            )
        } else if m.contains("password authentication failed") {
            let from = match (&self.password_file, &self.password_env) {
                (Some(p), _) => format!("the password read from password_file {}", p.display()),
                (None, Some(v)) => {
                    format!("the password read from the variable {v} (password_env)")
                }
                (None, None) => "no password configured".to_string(),
            };
            format!("{m} ({from})")
        } else if m.contains("UnknownIssuer") {
            format!(
                "{m}: the server's certificate is signed by a CA this host does not trust: set ca_file in [store] to that CA's certificate"
            )
        } else {
            m.to_string()
        };
        crate::error::Error::Config(format!("{f}: store: {m}"))
    }

    /// How often the owner renews its lease.
    pub fn renew_period(&self) -> Duration {
        self.lease / 5
    }
    /// When an owner that cannot renew sends its task SIGTERM (after the last renewal).
    pub fn fence_term(&self) -> Duration {
        self.lease.mul_f64(0.6)
    }
    /// ... and SIGKILL.
    pub fn fence_kill(&self) -> Duration {
        self.lease.mul_f64(0.8)
    }
    /// The longest `kill_grace` that fits between the fence's TERM and its KILL.
    pub fn max_kill_grace(&self) -> Duration {
        self.lease.mul_f64(0.2)
    }
}

/// Percent-decode `s` (a URL part), or None if it is malformed or not UTF-8.
fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a URL is refused: a message that never repeats a password.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UrlError {
    Password,
    Malformed(String),
}

const URL_FORM: &str = "expected a URL like \"postgresql://USER@HOST:5432/DATABASE\" (or \"postgresql://USER@/DATABASE?host=/run/postgresql\" for a Unix socket)";

/// Parse a `postgresql://` (or `postgres://`) URL. A password (`user:pw@` or
/// `?password=`) is refused; the only query parameter accepted is `host` (a Unix socket's
/// directory, as libpq reads it).
pub(crate) fn parse_url(url: &str) -> std::result::Result<PgUrl, UrlError> {
    let bad = |what: &str| UrlError::Malformed(format!("{URL_FORM}: {what}"));
    let rest = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
        .ok_or_else(|| bad("it does not start with postgresql://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    // The userinfo ends at the last '@' (a password may hold '/' or '@' unencoded:
    // it must be seen as one whatever it holds).
    let (userinfo, after) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if userinfo.is_some_and(|u| u.contains(':')) {
        return Err(UrlError::Password);
    }
    let (hostport, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i + 1..]),
        None => (after, ""),
    };
    let mut socket_dir: Option<String> = None;
    let mut query_port: Option<u16> = None;
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "password" => return Err(UrlError::Password),
                "host" => {
                    let v = pct_decode(v).ok_or_else(|| bad("the host parameter is malformed"))?;
                    if !v.starts_with('/') {
                        return Err(bad(
                            "the host parameter must be a Unix socket's directory (an absolute path); put a host name before the path",
                        ));
                    }
                    socket_dir = Some(v);
                }
                "port" => {
                    let p = v
                        .parse::<u16>()
                        .ok()
                        .filter(|n| *n != 0)
                        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
                    query_port = Some(p);
                }
                "sslmode" | "sslrootcert" => {
                    return Err(bad(&format!(
                        "{k} is not read: use the keys `tls` and `ca_file` of [store]"
                    )))
                }
                other => {
                    return Err(bad(&format!(
                        "the parameter {:?} is not supported (only host=/socket/dir and port=N)",
                        pct_decode(other).unwrap_or_default()
                    )))
                }
            }
        }
    }
    let user = userinfo
        .and_then(pct_decode)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("a user name is needed before '@'"))?;
    // host[:port], host may be [v6].
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("text after ']'"))?),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (
                pct_decode(h).ok_or_else(|| bad("the host is malformed"))?,
                Some(p),
            ),
            None => (
                pct_decode(hostport).ok_or_else(|| bad("the host is malformed"))?,
                None,
            ),
        }
    };
    let port = match port {
        None => query_port.unwrap_or(DEFAULT_PORT),
        Some(_) if query_port.is_some() => return Err(bad("two ports")),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    let host = if host.starts_with('/') {
        if socket_dir.is_some() {
            return Err(bad("two Unix socket directories"));
        }
        PgHost::Unix(PathBuf::from(host))
    } else if let Some(d) = socket_dir {
        if !host.is_empty() {
            return Err(bad("both a host and host=/socket/dir"));
        }
        PgHost::Unix(PathBuf::from(d))
    } else if host.is_empty() {
        return Err(bad("a host is needed (or host=/socket/dir)"));
    } else if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(bad("the host is malformed"));
    } else {
        PgHost::Tcp(host)
    };
    let dbname = match pct_decode(path) {
        Some(d) if d.is_empty() => user.clone(),
        Some(d) if !d.contains('/') && !d.chars().any(char::is_control) => d,
        _ => return Err(bad("the database name is malformed")),
    };
    Ok(PgUrl {
        user,
        host,
        port,
        dbname,
    })
}

/// Read the password from `path`: a regular file that only its owner may read (or,
/// owned by root, its group too, as libpq allows), its first line without the newline.
fn read_password_file(path: &Path) -> std::result::Result<Secret, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let mode = meta.mode() & 0o777;
    let open = if meta.uid() == 0 {
        mode & 0o037
    } else {
        mode & 0o077
    };
    if open != 0 {
        return Err(format!(
            "{} is open to others (mode {mode:04o}): expected a file only its owner can read (chmod 600)",
            path.display()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text =
        String::from_utf8(text).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let pw = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if pw.is_empty() {
        return Err(format!(
            "{} is empty: expected the password",
            path.display()
        ));
    }
    Ok(Secret::new(pw.to_string()))
}

/// This host's name, as `sys::hostname` says it (config may not use `sys`: that would be
/// an import cycle through `core`).
fn hostname() -> String {
    match nix::unistd::gethostname() {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => "localhost".to_string(),
    }
}

/// Validate `[store]`. `resolve` anchors relative paths at the config's folder; `getenv`
/// reads `password_env` (the process's environment, or a test's).
pub(super) fn store(
    ctx: &Ctx,
    s: &RawStore,
    resolve: &dyn Fn(&str) -> PathBuf,
    getenv: &dyn Fn(&str) -> Option<OsString>,
) -> Result<FleetConfig> {
    let url = match parse_url(&s.url) {
        Ok(u) => u,
        Err(UrlError::Password) => {
            return Err(ctx.err(
                "store.url",
                "the URL holds a password: put it in password_file or password_env, never in the URL (it would be seen in argv, logs and `check`)",
            ))
        }
        Err(UrlError::Malformed(m)) => return Err(ctx.err("store.url", m)),
    };
    if s.password_file.is_some() && s.password_env.is_some() {
        return Err(ctx.err(
            "store",
            "expected either `password_file` or `password_env`, not both",
        ));
    }
    let path = |key: &str, v: &Option<String>| -> Result<Option<PathBuf>> {
        match v {
            None => Ok(None),
            Some(p) if p.is_empty() => Err(ctx.err(key, "expected a path, got an empty string")),
            Some(p) => Ok(Some(resolve(p))),
        }
    };
    let password_file = path("store.password_file", &s.password_file)?;
    let ca_file = path("store.ca_file", &s.ca_file)?;
    let mut password = None;
    if let Some(f) = &password_file {
        password = Some(read_password_file(f).map_err(|m| ctx.err("store.password_file", m))?);
    }
    if let Some(v) = &s.password_env {
        if v.is_empty() || v.contains('=') || v.contains('\0') {
            return Err(ctx.err(
                "store.password_env",
                format!("expected the name of an environment variable, got {v:?}"),
            ));
        }
        let value = getenv(v).ok_or_else(|| {
            ctx.err(
                "store.password_env",
                format!("the variable {v} is not set in run-chain's environment"),
            )
        })?;
        let value = value.into_string().map_err(|_| {
            ctx.err(
                "store.password_env",
                format!("the variable {v} is not UTF-8 text"),
            )
        })?;
        if value.is_empty() {
            return Err(ctx.err(
                "store.password_env",
                format!("the variable {v} is empty: expected the password"),
            ));
        }
        password = Some(Secret::new(value));
    }
    let tls = match s.tls.as_deref() {
        None if url.is_local() => TlsMode::None,
        None | Some("required") => TlsMode::Required,
        Some("opportunistic") => TlsMode::Opportunistic,
        Some("none") => TlsMode::None,
        Some(other) => {
            return Err(ctx.err(
                "store.tls",
                format!("expected \"required\", \"opportunistic\" or \"none\", got {other:?}"),
            ))
        }
    };
    if matches!(url.host, PgHost::Unix(_)) && tls != TlsMode::None {
        return Err(ctx.err(
            "store.tls",
            "a Unix socket carries no TLS: expected tls = \"none\" (or no tls key) with a socket directory",
        ));
    }
    let lease = match &s.lease {
        None => DEFAULT_LEASE,
        Some(t) => {
            let d = parse_duration(t).map_err(|m| ctx.err("store.lease", m))?;
            if d < MIN_LEASE {
                return Err(ctx.err(
                    "store.lease",
                    format!("expected at least \"1s\" (the owner renews every lease/5), got {t:?}"),
                ));
            }
            d
        }
    };
    let host = match &s.host {
        None => hostname(),
        Some(h) => {
            if h.is_empty()
                || h.len() > 255
                || h.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(ctx.err(
                    "store.host",
                    format!("expected this host's name: 1 to 255 characters, no spaces, got {h:?}"),
                ));
            }
            h.clone()
        }
    };
    Ok(FleetConfig {
        display_url: url.display(),
        url,
        password,
        password_file,
        password_env: s.password_env.clone(),
        tls,
        tls_explicit: s.tls.is_some(),
        ca_file,
        lease,
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("postgresql://runchain@db.example.com:5433/rc").unwrap();
        assert_eq!(u.user, "runchain");
        assert_eq!(u.host, PgHost::Tcp("db.example.com".into()));
        assert_eq!(u.port, 5433);
        assert_eq!(u.dbname, "rc");
        assert!(!u.is_local());
        assert_eq!(u.display(), "runchain@db.example.com:5433/rc");

        let u = parse_url("postgres://a@127.0.0.1/").unwrap();
        assert_eq!((u.port, u.dbname.as_str()), (5432, "a"));
        assert!(u.is_local());
        let u = parse_url("postgresql://a@[::1]:6000/d").unwrap();
        assert_eq!(u.host, PgHost::Tcp("::1".into()));
        assert_eq!(u.display(), "a@[::1]:6000/d");
        assert!(u.is_local());
        assert!(parse_url("postgresql://a@localhost/d").unwrap().is_local());
        assert!(!parse_url("postgresql://a@10.0.0.1/d").unwrap().is_local());

        let u = parse_url("postgresql://a@/d?host=/run/postgresql").unwrap();
        assert_eq!(u.host, PgHost::Unix("/run/postgresql".into()));
        assert!(u.is_local());
        assert_eq!(
            u.socket_path().unwrap(),
            PathBuf::from("/run/postgresql/.s.PGSQL.5432")
        );
        let u = parse_url("postgresql://a@/d?host=/tmp/s&port=5999").unwrap();
        assert_eq!(
            (u.host.clone(), u.port),
            (PgHost::Unix("/tmp/s".into()), 5999)
        );
        assert_eq!(u.to_url(), "postgresql://a@:5999/d?host=/tmp/s");
        let u = parse_url("postgresql://a@%2Ftmp%2Fs:5999/d").unwrap();
        assert_eq!(u.host, PgHost::Unix("/tmp/s".into()));
        assert_eq!(u.display(), "a@/tmp/s:5999/d");

        let u = parse_url("postgresql://us%40er@h/d%20b").unwrap();
        assert_eq!((u.user.as_str(), u.dbname.as_str()), ("us@er", "d b"));
        for text in [
            "postgresql://us%40er@h/d%20b",
            "postgresql://a@[::1]:6000/d",
            "postgresql://a@/d?host=/run/postgresql",
            "postgresql://a@%2Ftmp%2Fs:5999/d",
            "postgresql://runchain@db.example.com:5433/rc",
        ] {
            let u = parse_url(text).unwrap();
            assert_eq!(
                parse_url(&u.to_url()).unwrap(),
                u,
                "{text} -> {}",
                u.to_url()
            );
        }
    }

    #[test]
    fn passwords_in_urls_are_refused_without_echo() {
        for u in [
            "postgresql://a:hunter2@h/d",
            "postgresql://a:@h/d",
            "postgresql://a@h/d?password=hunter2",
            "postgresql://a:hunter2@h:5432/d?host=/x",
            "postgresql://a:hun/ter@2@h/d",
        ] {
            assert_eq!(parse_url(u), Err(UrlError::Password), "{u}");
        }
    }

    #[test]
    fn malformed_urls() {
        for u in [
            "mysql://a@h/d",
            "postgresql://h/d",
            "postgresql://@h/d",
            "postgresql://a@h:0/d",
            "postgresql://a@h:x/d",
            "postgresql://a@/d",
            "postgresql://a@h/d?sslmode=require",
            "postgresql://a@h/d?options=-c",
            "postgresql://a@h/d?host=relative",
            "postgresql://a@[::1/d",
            "postgresql://a@h/d/e",
            "postgresql://a@h:5432/d?port=5433",
            "postgresql://a@h/d?port=0",
        ] {
            assert!(
                matches!(parse_url(u), Err(UrlError::Malformed(_))),
                "{u}: {:?}",
                parse_url(u)
            );
        }
    }

    use crate::config::Config;
    use std::os::unix::fs::PermissionsExt as _;

    fn parse(text: &str) -> std::result::Result<Config, String> {
        Config::parse(text, Path::new("/etc/rc/tasks.toml")).map_err(|e| e.to_string())
    }

    fn with_store(store: &str) -> String {
        format!("[tasks.a]\ncommand = \"true\"\n[store]\n{store}\n")
    }

    #[test]
    fn every_key_and_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&with_store(&format!(
            "url = \"postgresql://runchain@db.example.com:5433/rc\"\npassword_file = \"{}\"\ntls = \"opportunistic\"\nca_file = \"ca.pem\"\nlease = \"20s\"\nhost = \"web-3\"",
            pw.display()
        )))
        .unwrap();
        let s = c.store.unwrap();
        assert_eq!(s.display_url, "runchain@db.example.com:5433/rc");
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(s.password_file.as_deref(), Some(pw.as_path()));
        assert_eq!(s.tls, TlsMode::Opportunistic);
        assert!(s.tls_explicit);
        assert_eq!(s.ca_file, Some(PathBuf::from("/etc/rc/ca.pem")));
        assert_eq!(s.lease, Duration::from_secs(20));
        assert_eq!(s.host, "web-3");
        assert_eq!(s.renew_period(), Duration::from_secs(4));
        assert_eq!(s.fence_term(), Duration::from_secs(12));
        assert_eq!(s.fence_kill(), Duration::from_secs(16));
        assert_eq!(s.max_kill_grace(), Duration::from_secs(4));
        // Debug of the whole config shows no password.
        assert!(!format!("{s:?}").contains("s3cret"));

        // Defaults: TLS by place, 10 s lease, the hostname.
        let d = |url: &str| {
            parse(&with_store(&format!("url = \"{url}\"")))
                .unwrap()
                .store
                .unwrap()
        };
        let remote = d("postgresql://a@db.example.com/x");
        assert_eq!(
            (remote.tls, remote.tls_explicit),
            (TlsMode::Required, false)
        );
        assert_eq!(remote.lease, DEFAULT_LEASE);
        assert!(!remote.host.is_empty());
        assert_eq!(remote.host, hostname());
        assert_eq!(remote.password, None);
        for local in [
            "postgresql://a@127.0.0.1/x",
            "postgresql://a@127.8.9.10/x",
            "postgresql://a@localhost/x",
            "postgresql://a@[::1]/x",
            "postgresql://a@/x?host=/run/postgresql",
        ] {
            assert_eq!(d(local).tls, TlsMode::None, "{local}");
        }
        assert_eq!(d("postgresql://a@10.1.2.3/x").tls, TlsMode::Required);
    }

    #[test]
    fn store_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("url = \"postgresql://a:hunter2@h/x\"", "store.url"),
            ("url = \"postgresql://a@h/x?password=hunter2\"", "store.url"),
            ("url = \"http://h/x\"", "store.url"),
            (
                "url = \"postgresql://a@h/x\"\npassword_file = \"/p\"\npassword_env = \"P\"",
                "store",
            ),
            (
                "url = \"postgresql://a@h/x\"\npassword_file = \"/nonexistent/pw\"",
                "store.password_file",
            ),
            (
                "url = \"postgresql://a@h/x\"\npassword_env = \"RUN_CHAIN_UNIT_SURELY_UNSET\"",
                "store.password_env",
            ),
            (
                "url = \"postgresql://a@h/x\"\npassword_env = \"A=B\"",
                "store.password_env",
            ),
            ("url = \"postgresql://a@h/x\"\ntls = \"maybe\"", "store.tls"),
            (
                "url = \"postgresql://a@/x?host=/s\"\ntls = \"required\"",
                "store.tls",
            ),
            (
                "url = \"postgresql://a@h/x\"\nlease = \"999ms\"",
                "store.lease",
            ),
            ("url = \"postgresql://a@h/x\"\nlease = \"0\"", "store.lease"),
            (
                "url = \"postgresql://a@h/x\"\nlease = \"soon\"",
                "store.lease",
            ),
            ("url = \"postgresql://a@h/x\"\nhost = \"\"", "store.host"),
            ("url = \"postgresql://a@h/x\"\nhost = \"a b\"", "store.host"),
            (
                "url = \"postgresql://a@h/x\"\nca_file = \"\"",
                "store.ca_file",
            ),
        ];
        for (store, key) in cases {
            let e = parse(&with_store(store)).expect_err(store);
            assert!(e.contains(&format!("tasks.toml: {key}: ")), "{store}: {e}");
            assert!(!e.contains("hunter2"), "{store}: {e}");
        }
        // Unknown keys and a missing url: serde's messages name them.
        let e = parse(&with_store("url = \"postgresql://a@h/x\"\nsslmode = \"x\"")).unwrap_err();
        assert!(e.contains("sslmode"), "{e}");
        let e = parse(&with_store("lease = \"10s\"")).unwrap_err();
        assert!(e.contains("url"), "{e}");
        // A lease of exactly 1 s is the shortest accepted.
        assert!(parse(&with_store("url = \"postgresql://a@h/x\"\nlease = \"1s\"")).is_ok());
    }

    #[test]
    fn password_files_must_be_private_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let text = with_store(&format!(
            "url = \"postgresql://a@h/x\"\npassword_file = \"{}\"",
            pw.display()
        ));
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
            // Owned by root (the tests may run as root): group read is allowed then, as libpq does.
            let root_group_read = mode == 0o640 && unsafe { libc::geteuid() } == 0;
            let r = parse(&text);
            if root_group_read {
                assert!(r.is_ok(), "{mode:o}: {r:?}");
                continue;
            }
            let e = r.expect_err("too open");
            assert!(
                e.contains("store.password_file") && e.contains("chmod 600"),
                "{mode:o}: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(parse(&text).is_ok());
        std::fs::write(&pw, "\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(parse(&text).unwrap_err().contains("is empty"));
        let text = with_store(&format!(
            "url = \"postgresql://a@h/x\"\npassword_file = \"{}\"",
            dir.path().display()
        ));
        assert!(parse(&text).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn password_env_is_read_through_getenv() {
        let raw: crate::config::raw::RawConfig = toml::from_str(&with_store(
            "url = \"postgresql://a@h/x\"\npassword_env = \"PGPW\"",
        ))
        .unwrap();
        let ctx = Ctx {
            file: Path::new("/etc/rc/tasks.toml"),
        };
        let resolve = |p: &str| PathBuf::from(p);
        let raw = raw.store.unwrap();
        let s = store(&ctx, &raw, &resolve, &|v| {
            (v == "PGPW").then(|| "pw!".into())
        })
        .unwrap();
        assert_eq!(s.password.unwrap().expose(), "pw!");
        assert_eq!(s.password_env.as_deref(), Some("PGPW"));
        let e = store(&ctx, &raw, &resolve, &|_| Some("".into())).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
    }

    #[test]
    fn scope() {
        let g = "[tasks.a]\ncommand = \"true\"\ngroup = \"db\"\n[groups.db]\nmax_running = 1\n";
        let c = parse(g).unwrap();
        assert_eq!(c.groups["db"].scope, Scope::Host);
        let c = parse(&format!("{g}scope = \"host\"\n")).unwrap();
        assert_eq!(c.groups["db"].scope, Scope::Host);
        let e = parse(&format!("{g}scope = \"fleet\"\n")).unwrap_err();
        assert!(
            e.contains("groups.db.scope") && e.contains("[store]"),
            "{e}"
        );
        let e = parse(&format!("{g}scope = \"world\"\n")).unwrap_err();
        assert!(e.contains("groups.db.scope"), "{e}");
        let c = parse(&format!(
            "{g}scope = \"fleet\"\n[store]\nurl = \"postgresql://a@h/x\"\n"
        ))
        .unwrap();
        assert_eq!(c.groups["db"].scope, Scope::Fleet);
    }

    #[test]
    fn secret_debug_shows_nothing() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
