//! The fleet tests' shared scaffolding: "hosts" (run-chain instances with their own RUN_ROOT
//! and `[store] host`) on one database of the suite's PostgreSQL (`support::pg`), the task
//! script that stamps the ledger (`support::ledger`), and the database and log readings the
//! tests judge by (the lease row, plain numbers, the owner's epoch in its log).
//!
//! Two shapes of test use it:
//! - [`Fleet`]: one temp dir holding every host's config (`DIR/HOST.toml`), RUN_ROOT
//!   (`DIR/run-HOST`), the ledger and one task script; chain [`CHAIN`] runs that script. Used
//!   by the end-to-end cases that kill, stop, cut and relaunch owners (tests/fleet.rs,
//!   fleet_faults.rs, fleet_fence.rs).
//! - [`host_env`]: one [`TestEnv`] per host whose config is the `[store]` section followed by
//!   the test's own `[defaults]`/`[tasks]` text; the env's own `spawn`/`sub` run it (tests
//!   that look at one host's views, records or commands).
//!
//! Include it next to `common` and `support` (it names `crate::common` and `crate::support`,
//! which the `support` module itself does not need, so binaries without `common` keep
//! building):
//! ```ignore
//! mod common;
//! mod support;
//! #[path = "support/fleet.rs"]
//! mod fleet;
//! ```
//! Every wait here is a condition with a deadline ([`common::DEADLINE`] or the runner's,
//! failing at once when the runner exits), never a fixed sleep.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, Runner, TestEnv, DEADLINE};
use crate::support::ledger::{self, Interval, Ledger};
use crate::support::netns::Netns;
use crate::support::pg::Pg;

/// The chain every [`Fleet`] runs (one task of the same name).
pub const CHAIN: &str = "work";

// ---------------------------------------------------------------------------------------------
// Small readings
// ---------------------------------------------------------------------------------------------

/// Nanoseconds (a CLOCK_MONOTONIC difference) as seconds.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// `a - b` (CLOCK_MONOTONIC ns) as seconds, negative when `a` is earlier.
pub fn signed_secs(a: u64, b: u64) -> f64 {
    (a as i128 - b as i128) as f64 / 1e9
}

/// A database clock reading (seconds since the epoch) as CLOCK_MONOTONIC ns (same machine:
/// the database's clock is the test's wall clock).
pub fn db_time_to_mono(db_secs: f64) -> i128 {
    ledger::mono_ns() as i128 + ((db_secs - common::epoch_now()) * 1e9) as i128
}

/// A file's text; empty while it does not exist (a log not written yet).
pub fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The integer `sql` returns; -1 while it cannot be read (no schema or table yet, a NULL).
pub fn sql_int(pg: &Pg, db: &str, sql: &str) -> i64 {
    pg.try_psql(db, sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

/// The epoch in the last `fleet: owner (epoch E` line of `stderr`.
pub fn owner_epoch(stderr: &str) -> Option<i64> {
    let i = stderr.rfind("fleet: owner (epoch ")?;
    let rest = &stderr[i + "fleet: owner (epoch ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Waits (the runner's deadline, failing if it exits) until its stderr contains `needle`.
pub fn wait_stderr(r: &mut Runner, what: &str, needle: &str) {
    let e = r.stderr.clone();
    r.wait_for(what, || text(&e).contains(needle));
}

/// Spawns `args` on host `h1` until it owns the lease, then on `h2` until it is a standby
/// (each wait `timeout`, on the hosts' logs); returns both runners and their logs' paths.
pub fn spawn_owner_then_standby(
    h1: &TestEnv,
    h2: &TestEnv,
    args: &[&str],
    timeout: Duration,
) -> (Runner, PathBuf, Runner, PathBuf) {
    let r1 = h1.spawn(args);
    let e1 = r1.stderr.clone();
    common::wait_until_for(timeout, "h1 owns the lease", || {
        text(&e1).contains("fleet: owner (epoch ")
    });
    let r2 = h2.spawn(args);
    let e2 = r2.stderr.clone();
    common::wait_until_for(timeout, "h2 is a standby", || text(&e2).contains("standby"));
    (r1, e1, r2, e2)
}

/// A ledger path `NAME` in a temp dir of its own (kept while the `TempDir` lives), for tests
/// whose hosts are separate [`TestEnv`]s sharing one ledger.
pub fn ledger_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name);
    (dir, p)
}

/// How many runs HOST has in the ledger at `ledger_path`.
pub fn runs_of(ledger_path: &Path, host: &str) -> usize {
    Ledger::read(ledger_path).of_host(host).count()
}

/// Reaps `runner`, returning the CLOCK_MONOTONIC time its exit was seen (polled every 5 ms,
/// up to [`DEADLINE`]).
pub fn wait_exit_mono(runner: &mut Runner) -> (std::process::ExitStatus, u64) {
    let t = Instant::now();
    loop {
        if let Some(st) = runner.try_status() {
            return (st, ledger::mono_ns());
        }
        assert!(
            t.elapsed() < DEADLINE,
            "run-chain {} did not exit; stderr:\n{}",
            runner.pid,
            runner.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An observation window, not a synchronisation: keeps watching for `dur` that every runner
/// stays alive (checked every 50 ms), failing at once with `what` if one exits.
pub fn hold(dur: Duration, runners: &mut [&mut Runner], what: &str) {
    let t = Instant::now();
    while t.elapsed() < dur {
        for r in runners.iter_mut() {
            if let Some(st) = r.try_status() {
                panic!(
                    "{what}: run-chain {} exited ({st:?}); stderr:\n{}",
                    r.pid,
                    r.stderr()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// The lease row
// ---------------------------------------------------------------------------------------------

/// The lease row of [`CHAIN`], as the database has it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub holder: String,
    pub host: String,
    pub epoch: i64,
    /// expires_at > now() on the database's clock.
    pub live: bool,
    /// expires_at, seconds since the epoch (DB clock).
    pub expires_at: f64,
    /// acquired_at, seconds since the epoch (DB clock).
    pub acquired_at: f64,
}

/// [`CHAIN`]'s lease row in `db`; None while there is none (or the schema is not made yet).
pub fn lease_row(pg: &Pg, db: &str) -> Option<LeaseRow> {
    let out = pg
        .try_psql(
            db,
            &format!(
                "SELECT coalesce(holder, ''), coalesce(host, ''), epoch, expires_at > now(), \
                 coalesce(extract(epoch FROM expires_at), 0), \
                 coalesce(extract(epoch FROM acquired_at), 0) \
                 FROM run_chain.leases WHERE chain = '{CHAIN}'"
            ),
        )
        .ok()?;
    let line = out.lines().next()?;
    let f: Vec<&str> = line.split('|').collect();
    if f.len() != 6 {
        return None;
    }
    Some(LeaseRow {
        holder: f[0].to_owned(),
        host: f[1].to_owned(),
        epoch: f[2].parse().ok()?,
        live: f[3] == "t",
        expires_at: f[4].parse().unwrap_or(0.0),
        acquired_at: f[5].parse().unwrap_or(0.0),
    })
}

/// [`CHAIN`]'s lease row in `db`, which must be there.
pub fn lease(pg: &Pg, db: &str) -> LeaseRow {
    lease_row(pg, db).expect("the lease row")
}

/// SQL counting HOST's fresh standby row for [`CHAIN`] (upserted at each acquire try, every
/// 0.5-1.0 s) while HOST is not the lease's holder: 1 when HOST waits as a standby.
pub fn standby_sql(host: &str) -> String {
    format!(
        "SELECT count(*) FROM run_chain.standbys s WHERE s.chain = '{CHAIN}' \
         AND s.host = '{host}' AND s.seen_at > now() - interval '2 s' \
         AND s.holder IS DISTINCT FROM \
         (SELECT holder FROM run_chain.leases WHERE chain = '{CHAIN}')"
    )
}

// ---------------------------------------------------------------------------------------------
// Hosts as TestEnvs
// ---------------------------------------------------------------------------------------------

/// The `[store]` lines naming `url` and the password file `pw`, then `extra` (more `[store]`
/// keys, may be empty).
pub fn store_lines(url: &str, pw: &Path, extra: &str) -> String {
    format!(
        "url = \"{url}\"\npassword_file = \"{}\"\n{extra}",
        pw.display()
    )
}

/// The tasks of the `store import` tests (fleet_import.rs, fleet_schema5.rs): `a` (echo, exit
/// 0) and `b` (echo, exit 3), 50 ms cooldowns; chain `a b` makes a history to import.
pub const IMPORT_TASKS: &str = r#"
[defaults]
success_cooldown = "50ms"
fail_cooldown = "50ms"
stop_grace = "0s"
kill_grace = "200ms"

[tasks.a]
command = "echo a-out"

[tasks.b]
command = "echo b-out; exit 3"
"#;

/// One "host": a fresh [`TestEnv`] (its own RUN_ROOT) with [`write_host_config`]'s config.
pub fn host_env(pg: &Pg, name: &str, url: &str, lease: &str, rest: &str) -> TestEnv {
    let env = TestEnv::new("");
    write_host_config(&env, pg, name, url, lease, rest);
    env
}

/// Writes `env`'s config:
/// ```text
/// [store]
/// url = URL, password_file = DIR/pw (runchain's password), lease = LEASE, host = NAME
/// REST
/// ```
/// `rest` is the test's `[defaults]`, `[tasks.*]`, `[groups.*]`, `[email]`... text.
pub fn write_host_config(env: &TestEnv, pg: &Pg, name: &str, url: &str, lease: &str, rest: &str) {
    let pw = pg.write_runchain_password(&env.path("pw"));
    env.write_config(&format!(
        "\n[store]\n{}lease = \"{lease}\"\nhost = \"{name}\"\n{rest}",
        store_lines(url, &pw, "")
    ));
}

/// A `[defaults]` table: both cooldowns COOLDOWN, `stop_grace = "0s"`, KILL_GRACE (keep it
/// under 0.2 × lease, or `check` warns).
pub fn defaults(cooldown: &str, kill_grace: &str) -> String {
    format!(
        "\n[defaults]\nsuccess_cooldown = \"{cooldown}\"\nfail_cooldown = \"{cooldown}\"\n\
         stop_grace = \"0s\"\nkill_grace = \"{kill_grace}\"\n"
    )
}

/// `run-chain status --json` of `env` (exit 0), parsed.
pub fn status_json(env: &TestEnv) -> serde_json::Value {
    let out = env.sub(&["status", "--json"]);
    out.assert_code(0);
    serde_json::from_str(&out.stdout).expect("status --json")
}

/// A `[tasks.TASK]` table whose command is a ledger script (DIR/task.sh of `env`,
/// [`ledger::write_task_script`]: `ticks` ticks of 50 ms, TERM trap) stamping `ledger_path`
/// as host HOST (`RC_HOST`). More keys of the table may follow it.
pub fn ledger_task(
    env: &TestEnv,
    task: &str,
    host: &str,
    ledger_path: &Path,
    ticks: u32,
) -> String {
    let script = ledger::write_task_script(&env.path("task.sh"), ledger_path, ticks, "0.05");
    format!(
        "[tasks.{task}]\ncommand = \"{}\"\nenv = {{ RC_HOST = \"{host}\" }}\n",
        script.display()
    )
}

// ---------------------------------------------------------------------------------------------
// Fleet: several hosts in one temp dir, chain `work` stamping the ledger
// ---------------------------------------------------------------------------------------------

/// The shape of a [`Fleet`]'s chain and lease.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// `[store] lease`, as written.
    pub lease: &'static str,
    /// The same in seconds.
    pub lease_s: f64,
    /// Ticks of 50 ms per run.
    pub ticks: u32,
    /// success_cooldown and fail_cooldown.
    pub cooldown: &'static str,
    /// `[defaults] kill_grace`.
    pub kill_grace: &'static str,
}

/// Long runs (the owner is always inside one: 20000 ticks of 50 ms), lease 2 s, cooldown
/// 100 ms, kill_grace 100 ms (well under 0.2 × lease).
pub const LONG_RUNS: Shape = Shape {
    lease: "2s",
    lease_s: 2.0,
    ticks: 20000,
    cooldown: "100ms",
    kill_grace: "100ms",
};

/// One fleet test: a temp dir (configs, RUN_ROOTs, ledger, task script), a database, the URL
/// the hosts use, runchain's password file. Host HOST's config is `DIR/HOST.toml`, its
/// RUN_ROOT `DIR/run-HOST`; its task stamps the ledger as `$RC_HOST` = HOST.
pub struct Fleet<'a> {
    pub env: TestEnv,
    pub pg: &'a Pg,
    pub db: String,
    pub url: String,
    /// Extra `[store]` lines of [`Fleet::host_config`] (e.g. `tls = "none"`).
    pub store_extra: String,
    pub pw: PathBuf,
    pub ledger: PathBuf,
    /// The task's script (`DIR/task.sh`, [`ledger::write_task_script`] with `shape.ticks`);
    /// a test may write another script at this path before its first launch.
    pub script: PathBuf,
    pub shape: Shape,
}

impl<'a> Fleet<'a> {
    /// A fleet on a fresh database `PREFIX_*` of the binary's shared server.
    pub fn new(prefix: &str, shape: Shape) -> Fleet<'static> {
        let pg = Pg::shared();
        let (db, url) = pg.fresh_database(prefix);
        Fleet::on(pg, db, url, shape)
    }

    /// A fleet on database `db` of `pg` (a server of the test's own, for outages), reached at
    /// `url`.
    pub fn on(pg: &'a Pg, db: String, url: String, shape: Shape) -> Fleet<'a> {
        let env = TestEnv::new("");
        let pw = pg.write_runchain_password(&env.path("store-password"));
        let ledger = env.path("ledger");
        let script = ledger::write_task_script(&env.path("task.sh"), &ledger, shape.ticks, "0.05");
        Fleet {
            env,
            pg,
            db,
            url,
            store_extra: String::new(),
            pw,
            ledger,
            script,
            shape,
        }
    }

    /// The config of host HOST with `[store]` lines `store` (lease and host added).
    pub fn config_text(&self, host: &str, store: &str) -> String {
        self.config_text_as(host, host, store)
    }

    /// A config whose `[store] host` is HOST and whose task stamps the ledger as LEDGER_HOST.
    pub fn config_text_as(&self, host: &str, ledger_host: &str, store: &str) -> String {
        format!(
            r#"[defaults]
success_cooldown = "{cd}"
fail_cooldown = "{cd}"
stop_grace = "0s"
kill_grace = "{grace}"

[store]
{store}
lease = "{lease}"
host = "{host}"

[tasks.{CHAIN}]
argv = ["{script}"]
env = {{ RC_HOST = "{ledger_host}" }}
"#,
            cd = self.shape.cooldown,
            grace = self.shape.kill_grace,
            lease = self.shape.lease,
            script = self.script.display(),
        )
    }

    /// The ordinary `[store]` lines: this fleet's URL, password file and `store_extra`.
    pub fn store_lines(&self) -> String {
        self.store_lines_for(&self.url, &self.store_extra)
    }

    /// `[store]` lines with another URL (e.g. from inside a network namespace) and `extra`.
    pub fn store_lines_for(&self, url: &str, extra: &str) -> String {
        store_lines(url, &self.pw, extra)
    }

    /// Writes DIR/HOST.toml (this fleet's store) and returns its path.
    pub fn host_config(&self, host: &str) -> PathBuf {
        self.config_with(host, &format!("{host}.toml"), &self.store_lines())
    }

    /// Writes DIR/FILE, host HOST's config with `[store]` lines `store`; returns its path.
    pub fn config_with(&self, host: &str, file: &str, store: &str) -> PathBuf {
        let path = self.env.path(file);
        common::write_atomic(&path, &self.config_text(host, store));
        path
    }

    /// Host HOST's RUN_ROOT (DIR/run-HOST).
    pub fn run_root(&self, host: &str) -> PathBuf {
        self.env.path(&format!("run-{host}"))
    }

    /// `run-chain -c CONFIG --run-root DIR/run-ROOT ARGS... work` (not spawned).
    pub fn command(&self, root: &str, config: &Path, args: &[&str]) -> Command {
        let mut cmd = self.env.bare_command();
        cmd.arg("-c")
            .arg(config)
            .arg("--run-root")
            .arg(self.run_root(root))
            .args(args)
            .arg(CHAIN);
        cmd
    }

    /// [`Fleet::command`], in the background.
    pub fn launch_with(&self, root: &str, config: &Path, args: &[&str]) -> Runner {
        self.env.spawn_command(self.command(root, config, args))
    }

    /// Like `launch_with`, inside a network namespace (`ip netns exec` execs run-chain: the
    /// runner's pid is run-chain's).
    pub fn launch_in(&self, ns: &Netns, host: &str, config: &Path, args: &[&str]) -> Runner {
        let mut cmd = self.env.command_for("ip");
        cmd.args(["netns", "exec", &ns.name, common::bin()])
            .arg("-c")
            .arg(config)
            .arg("--run-root")
            .arg(self.run_root(host))
            .args(args)
            .arg(CHAIN);
        self.env.spawn_command(cmd)
    }

    /// Host HOST with this fleet's store (DIR/HOST.toml written), in the background.
    pub fn launch(&self, host: &str) -> Runner {
        let config = self.host_config(host);
        self.launch_with(host, &config, &[])
    }

    /// `run-chain status --json` for the instance of ROOT (config CONFIG): the chain's object.
    pub fn status_json(&self, root: &str, config: &Path) -> serde_json::Value {
        let mut cmd = self.env.bare_command();
        cmd.env("RUN_CHAIN_CONFIG", config)
            .env("RUN_ROOT", self.run_root(root))
            .args(["status", "--json"]);
        let out = self.env.finish_command(cmd);
        out.assert_code(0);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
        doc["chains"][0].clone()
    }

    /// The ledger as written so far.
    pub fn ledger(&self) -> Ledger {
        Ledger::read(&self.ledger)
    }

    /// The lease row, if any.
    pub fn lease_row(&self) -> Option<LeaseRow> {
        lease_row(self.pg, &self.db)
    }

    /// The lease row, which must be there.
    pub fn lease(&self) -> LeaseRow {
        self.lease_row().expect("the lease row")
    }

    /// Waits until HOST has a run started after `after` (mono ns) with at least one tick;
    /// fails at once if `runner` exits.
    pub fn wait_run(&self, runner: &mut Runner, host: &str, after: u64) -> Interval {
        let mut found = None;
        runner.wait_for(&format!("{host} runs {CHAIN}"), || {
            found = self
                .ledger()
                .of_host(host)
                .filter(|r| r.start > after && r.ticks >= 1)
                .min_by_key(|r| r.start)
                .cloned();
            found.is_some()
        });
        found.expect("found")
    }

    /// Waits until HOST's instance is a standby trying to acquire the lease ([`standby_sql`]);
    /// fails at once if `runner` exits.
    pub fn wait_standby(&self, runner: &mut Runner, host: &str) {
        let sql = self.standby_sql(host);
        runner.wait_for(&format!("{host} is a standby of {CHAIN}"), || {
            self.pg
                .try_psql(&self.db, &sql)
                .map(|n| n != "0")
                .unwrap_or(false)
        });
    }

    /// The usual start of a scenario: h1 launched and owning the chain (a run of it ticked),
    /// then h2 launched and waiting as its standby. Returns (h1, h1's first run, h2).
    pub fn owner_and_standby(&self) -> (Runner, Interval, Runner) {
        let mut h1 = self.launch("h1");
        let first = self.wait_run(&mut h1, "h1", 0);
        let mut h2 = self.launch("h2");
        self.wait_standby(&mut h2, "h2");
        (h1, first, h2)
    }

    /// [`standby_sql`].
    pub fn standby_sql(&self, host: &str) -> String {
        standby_sql(host)
    }

    /// Waits (up to `timeout`) until the ledger shows a tick of any run after `after`.
    pub fn wait_tick_after(&self, what: &str, after: u64, timeout: Duration) -> Interval {
        let mut found = None;
        common::wait_until_for(timeout, what, || {
            found = self
                .ledger()
                .runs
                .iter()
                .filter(|r| r.end > after && r.ticks >= 1)
                .max_by_key(|r| r.end)
                .cloned();
            found.is_some()
        });
        found.expect("found")
    }
}
