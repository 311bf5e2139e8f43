//! Real PostgreSQL (and PgBouncer) servers for the fleet tests.
//!
//! `Pg` is a server of the test's own: a temporary directory (0711) holding its data directory,
//! its Unix socket directory, its log, its TLS files and password files; `initdb` with
//! SCRAM-SHA-256, `pg_ctl` start on a free port, listening on every IPv4 address (so that a
//! test's network namespaces reach it on their veth's host side) while `pg_hba.conf` admits only
//! 127.0.0.1/32 and 10.231.0.0/16. initdb, postgres and pgbouncer refuse to run as root: as root
//! they run as `$RUN_CHAIN_PG_USER` (`postgres`, which Debian's postgresql-common creates; see
//! scripts/test) through `setpriv`; otherwise as the current user.
//!
//! Binaries: `$RUN_CHAIN_PG_BIN` (else the newest /usr/lib/postgresql/*/bin) and
//! `$RUN_CHAIN_PGBOUNCER` (else pgbouncer on PATH or /usr/sbin/pgbouncer). scripts/test installs
//! and exports them. A missing binary fails the test (it never skips).
//!
//! `Pg::shared()` is one server per test binary (tests take a database each through
//! `database()`); it is stopped by an `atexit` hook when the binary ends. Tests that stop or
//! restart the server use a `Pg::new()` of their own, stopped when dropped. Servers of a test
//! binary that died without cleaning up (their directory names carry its pid) are stopped and
//! removed by the next `Pg::new()`.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Prefix of a server's temporary directory: `run-chain-pg-PID-...` in the system temp dir.
const DIR_PREFIX: &str = "run-chain-pg-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The directory holding `initdb`, `pg_ctl`, `postgres`, `psql`.
pub fn pg_bin() -> PathBuf {
    if let Some(d) = std::env::var_os("RUN_CHAIN_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut found: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: Vec<u64> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL not found: no /usr/lib/postgresql/*/bin/postgres and RUN_CHAIN_PG_BIN unset; \
             scripts/test installs Debian's postgresql (or set RUN_CHAIN_PG_BIN)"
        ),
    }
}

pub fn pg_tool(name: &str) -> PathBuf {
    let p = pg_bin().join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

pub fn pgbouncer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RUN_CHAIN_PGBOUNCER") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]) {
        let p = dir.join("pgbouncer");
        if p.exists() {
            return p;
        }
    }
    panic!("pgbouncer not found (RUN_CHAIN_PGBOUNCER unset, none on PATH or in /usr/sbin): scripts/test installs it")
}

fn euid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// The unprivileged user the servers run as when the tests run as root: (name, uid, gid).
fn server_user() -> Option<(String, u32, u32)> {
    if euid() != 0 {
        return None;
    }
    let name = std::env::var("RUN_CHAIN_PG_USER").unwrap_or_else(|_| {
        let exists = |u: &str| {
            Command::new("id")
                .arg("-u")
                .arg(u)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if exists("postgres") {
            "postgres".into()
        } else {
            "run-chain-pg".into()
        }
    });
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .arg(flag)
            .arg(&name)
            .output()
            .expect("run id(1)");
        assert!(
            out.status.success(),
            "the servers' user {name:?} does not exist: as root, the tests run PostgreSQL as \
             $RUN_CHAIN_PG_USER (default postgres, else run-chain-pg); scripts/test creates it"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    let (uid, gid) = (id("-u"), id("-g"));
    Some((name, uid, gid))
}

/// A command that runs `program` as the servers' user (as root) or as ourselves.
fn as_server_user(program: &Path) -> Command {
    match server_user() {
        Some((_, uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            c.current_dir("/");
            c
        }
        None => {
            let mut c = Command::new(program);
            c.current_dir("/");
            c
        }
    }
}

fn chown_to_server(path: &Path) {
    if let Some((_, uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A password of 24 hex digits from /dev/urandom.
fn random_password() -> String {
    let mut b = [0u8; 12];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A free TCP port on every IPv4 address (bound to 0.0.0.0:0, read, closed).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0:0");
    l.local_addr().expect("local_addr").port()
}

fn write_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    chown_to_server(path);
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Whether `pid` is gone: no such process, or a zombie (the postmaster is not our child: its
/// reaper is init, which may take a moment).
pub fn pid_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

/// Waits up to `timeout` for `pid` to be gone; then SIGKILLs it if it is not.
fn wait_gone_or_kill(pid: i32, timeout: Duration) {
    let t = Instant::now();
    while !pid_gone(pid) && t.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !pid_gone(pid) {
        // SAFETY: plain kill(2) of a postmaster of ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Stops and removes the servers of test binaries that are gone (their dir names carry the
/// pid): postmaster killed with SIGQUIT then SIGKILL, directory removed.
fn remove_leftovers() {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let dir = e.path();
        for pidfile in [dir.join("pgdata/postmaster.pid"), dir.join("pgbouncer.pid")] {
            let pm = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if let Some(pm) = pm.filter(|p| !pid_gone(*p)) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pm, libc::SIGQUIT) };
                wait_gone_or_kill(pm, Duration::from_secs(5));
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Shutdown mode of `pg_ctl stop/restart`.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Smart,
    Fast,
    Immediate,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Smart => "smart",
            Mode::Fast => "fast",
            Mode::Immediate => "immediate",
        }
    }
}

pub struct Pg {
    dir: tempfile::TempDir,
    pub port: u16,
    pgdata: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    ca: PathBuf,
    superuser_password: String,
    runchain_password: String,
    clear_password: String,
    md5_password: String,
    running: Mutex<bool>,
}

impl Pg {
    /// The server shared by all the tests of this test binary (started at the first call,
    /// stopped when the binary exits). Do not stop or restart it: use `Pg::new()` for that.
    pub fn shared() -> &'static Pg {
        static SHARED: OnceLock<Pg> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(pg) = SHARED.get() {
                pg.stop_immediately();
                let _ = fs::remove_dir_all(pg.dir.path());
            }
        }
        SHARED.get_or_init(|| {
            let pg = Pg::new();
            // SAFETY: registers a plain extern "C" function.
            unsafe { libc::atexit(stop_shared) };
            pg
        })
    }

    /// A new server of its own (stopped and removed when dropped).
    pub fn new() -> Pg {
        remove_leftovers();
        let initdb = pg_tool("initdb");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("create the server's temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).expect("chmod 0711");
        let p = |n: &str| dir.path().join(n);
        let (pgdata, sock, log) = (p("pgdata"), p("sock"), p("server.log"));
        fs::create_dir(&sock).expect("mkdir sock");
        chown_to_server(&sock);
        // initdb accepts an empty directory; the server's user could not create it in ours.
        fs::create_dir(&pgdata).expect("mkdir pgdata");
        fs::set_permissions(&pgdata, fs::Permissions::from_mode(0o700)).expect("chmod pgdata");
        chown_to_server(&pgdata);
        fs::write(&log, "").expect("create the log");
        chown_to_server(&log);
        let superuser_password = random_password();
        write_file(
            &p("superuser.pw"),
            &format!("{superuser_password}\n"),
            0o600,
        );
        run_ok(
            "initdb",
            as_server_user(&initdb)
                .arg("-D")
                .arg(&pgdata)
                .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync", "--no-instructions"])
                .arg(format!("--pwfile={}", p("superuser.pw").display())),
        );
        let ca = make_tls(dir.path());
        let hba = "# run-chain tests (tests/support/pg.rs)\n\
            local all all scram-sha-256\n\
            host all clear_user 127.0.0.1/32 password\n\
            host all clear_user 10.231.0.0/16 password\n\
            host all md5_user 127.0.0.1/32 md5\n\
            host all md5_user 10.231.0.0/16 md5\n\
            host all all 127.0.0.1/32 scram-sha-256\n\
            host all all 10.231.0.0/16 scram-sha-256\n";
        write_file(&pgdata.join("pg_hba.conf"), hba, 0o600);
        let conf = format!(
            "\n# run-chain tests (tests/support/pg.rs)\n\
             listen_addresses = '0.0.0.0'\n\
             unix_socket_directories = '{sock}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             max_connections = 300\n\
             shared_buffers = 16MB\n\
             ssl = on\n\
             ssl_cert_file = '{dir}/tls/server.pem'\n\
             ssl_key_file = '{dir}/tls/server.key'\n\
             log_connections = on\n\
             log_disconnections = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            sock = sock.display(),
            dir = dir.path().display(),
        );
        let conf_path = pgdata.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text += &conf;
        write_file(&conf_path, &text, 0o600);
        let mut pg = Pg {
            dir,
            port: 0,
            pgdata,
            sock,
            log,
            ca,
            superuser_password,
            runchain_password: random_password(),
            clear_password: random_password(),
            md5_password: random_password(),
            running: Mutex::new(false),
        };
        // A free port may be taken between our probe and the server's bind: retry.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => {
                    pg.create_roles();
                    return pg;
                }
                Err(e) => last = e,
            }
        }
        panic!(
            "could not start PostgreSQL: {last}\nserver log:\n{}",
            pg.log_text()
        );
    }

    fn try_start(&self) -> Result<(), String> {
        let out = as_server_user(&pg_tool("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run pg_ctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        *self.running.lock().unwrap() = true;
        Ok(())
    }

    fn create_roles(&self) {
        let sql = format!(
            "CREATE ROLE runchain LOGIN PASSWORD '{r}';\n\
             CREATE ROLE clear_user LOGIN PASSWORD '{c}';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE md5_user LOGIN PASSWORD '{m}';\n",
            r = self.runchain_password,
            c = self.clear_password,
            m = self.md5_password,
        );
        self.psql("postgres", &sql);
    }

    /// Starts the (stopped) server again, on the same port.
    pub fn start(&self) {
        if let Err(e) = self.try_start() {
            panic!("{e}\nserver log:\n{}", self.log_text());
        }
    }

    /// `pg_ctl stop -m fast` (waits until it is down).
    pub fn stop(&self) {
        self.stop_mode(Mode::Fast);
    }

    pub fn stop_mode(&self, mode: Mode) {
        run_ok(
            "pg_ctl stop",
            as_server_user(&pg_tool("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-w", "-t", "60", "-m", mode.as_str(), "stop"]),
        );
        *self.running.lock().unwrap() = false;
    }

    /// `pg_ctl restart -m MODE` (same port and options; waits until it accepts connections).
    pub fn restart(&self, mode: Mode) {
        run_ok(
            "pg_ctl restart",
            as_server_user(&pg_tool("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-m", mode.as_str(), "restart"]),
        );
        *self.running.lock().unwrap() = true;
    }

    /// The postmaster's pid (first line of postmaster.pid), while it runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.pgdata.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn stop_immediately(&self) {
        let pm = self.postmaster_pid();
        let _ = as_server_user(&pg_tool("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-w", "-t", "20", "-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pm) = pm {
            wait_gone_or_kill(pm, Duration::from_secs(5));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// The server's log (log_connections is on: one line per connection and authentication).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The test CA (PEM) that signed the server's certificate (for localhost and 127.0.0.1).
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// `runchain`'s password (SCRAM-SHA-256).
    pub fn password(&self) -> &str {
        &self.runchain_password
    }

    /// `clear_user`'s password (pg_hba method `password`: sent in clear text when asked).
    pub fn clear_password(&self) -> &str {
        &self.clear_password
    }

    /// `md5_user`'s password (stored as MD5, pg_hba method `md5`).
    pub fn md5_password(&self) -> &str {
        &self.md5_password
    }

    /// Creates a fresh database `name` owned by runchain; returns its URL (no password):
    /// `postgresql://runchain@127.0.0.1:PORT/NAME`.
    pub fn database(&self, name: &str) -> String {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{name}\" OWNER runchain"),
        );
        self.url("runchain", "127.0.0.1", name)
    }

    /// A fresh database with a unique name starting with `prefix`; returns (name, url).
    pub fn fresh_database(&self, prefix: &str) -> (String, String) {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}_{}_{n}", std::process::id());
        let url = self.database(&name);
        (name, url)
    }

    /// `postgresql://USER@HOST:PORT/DB`.
    pub fn url(&self, user: &str, host: &str, db: &str) -> String {
        format!("postgresql://{user}@{host}:{}/{db}", self.port)
    }

    /// Writes `password` to `path` with mode 0600 (what a config's `password_file` names).
    pub fn write_password_file(path: &Path, password: &str) -> PathBuf {
        fs::write(path, format!("{password}\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
        path.to_path_buf()
    }

    /// Writes runchain's password to `path` (0600).
    pub fn write_runchain_password(&self, path: &Path) -> PathBuf {
        Pg::write_password_file(path, &self.runchain_password)
    }

    /// `psql` as the superuser over the Unix socket: the command, ready for more arguments.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut c = Command::new(pg_tool("psql"));
        c.env("PGPASSWORD", &self.superuser_password)
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .arg("-X")
            .args(["-v", "ON_ERROR_STOP=1", "-A", "-t", "-q"])
            .arg("-h")
            .arg(&self.sock)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db]);
        c
    }

    /// Runs `sql` in `db` as the superuser; its output (unaligned, tuples only), trimmed.
    /// Panics (with psql's stderr) when it fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        match self.try_psql(db, sql) {
            Ok(s) => s,
            Err(e) => panic!("psql -d {db} -c {sql:?}: {e}"),
        }
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .psql_command(db)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Whether the server accepts a TCP connection on 127.0.0.1:PORT now.
    pub fn accepts(&self) -> bool {
        TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", self.port).parse().unwrap(),
            Duration::from_millis(500),
        )
        .is_ok()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

/// A test CA and a server certificate for `localhost` and 127.0.0.1 signed by it (openssl, as
/// tests/alerts.rs makes its own), in DIR/tls; the key readable by the server only. Returns the
/// CA's path.
fn make_tls(dir: &Path) -> PathBuf {
    let tls = dir.join("tls");
    fs::create_dir(&tls).expect("mkdir tls");
    fs::set_permissions(&tls, fs::Permissions::from_mode(0o755)).expect("chmod tls");
    fs::write(
        tls.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let steps = [
        format!(
            "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=run-chain-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ),
        format!("req -new {ec} -keyout server.key -out server.csr -subj /CN=localhost"),
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
         -days 2 -extfile ext.cnf"
            .to_owned(),
    ];
    for step in steps {
        run_ok(
            &format!("openssl {step}"),
            Command::new("openssl")
                .args(step.split_whitespace())
                .current_dir(&tls),
        );
    }
    for f in ["server.pem", "server.key"] {
        let p = tls.join(f);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        chown_to_server(&p);
    }
    fs::set_permissions(tls.join("ca.pem"), fs::Permissions::from_mode(0o644)).expect("chmod");
    tls.join("ca.pem")
}

/// PgBouncer 1.18 in front of a `Pg`: in the foreground, a child of the test (as the servers'
/// user when root: it refuses root), `pool_mode = transaction`, `auth_type = scram-sha-256`
/// with runchain's plain password in its auth_file, on a free loopback port. Killed when
/// dropped.
pub struct PgBouncer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl PgBouncer {
    pub fn new(pg: &Pg) -> PgBouncer {
        let bin = pgbouncer_bin();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = pg.dir().join(format!("pgbouncer-{n}"));
        fs::create_dir(&dir).expect("mkdir pgbouncer dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_to_server(&dir);
        let log = dir.join("pgbouncer.log");
        fs::write(&log, "").expect("create log");
        chown_to_server(&log);
        write_file(
            &dir.join("userlist.txt"),
            &format!("\"runchain\" \"{}\"\n", pg.password()),
            0o600,
        );
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let ini = format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={pgport}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {dir}/userlist.txt\n\
                 pool_mode = transaction\n\
                 max_client_conn = 600\n\
                 default_pool_size = 20\n\
                 server_tls_sslmode = disable\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {log}\n",
                pgport = pg.port,
                dir = dir.display(),
                log = log.display(),
            );
            write_file(&dir.join("pgbouncer.ini"), &ini, 0o644);
            let mut child = as_server_user(&bin)
                .arg(dir.join("pgbouncer.ini"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn pgbouncer");
            let t = Instant::now();
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return PgBouncer {
                        child,
                        port,
                        dir,
                        log,
                    };
                }
                if let Ok(Some(st)) = child.try_wait() {
                    last = format!("pgbouncer exited ({st})");
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = "pgbouncer did not listen within 30 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "could not start pgbouncer: {last}\nlog:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `postgresql://runchain@127.0.0.1:PORT/DB` through the bouncer.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://runchain@127.0.0.1:{}/{db}", self.port)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our child (setpriv execs pgbouncer: same pid).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
