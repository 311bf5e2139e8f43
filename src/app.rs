//! From a parsed command line to a result: resolve the config, the chain and RUN_ROOT
//! once (flag, then environment, then file, then default), then run a command.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::chain::{Chain, Mode};
use crate::cli::{Cli, Command, Common, RunArgs, COMING_COMMANDS, RESERVED_NAMES};
use crate::config::{self, Config, Program};
use crate::driver::{self, Driver};
use crate::error::{exit, Error, Result};
use crate::guardian::Guardian;
use crate::pidfile::{next, PidFile};
use crate::root::{
    config_path, looked_run_root, moved_run_root, prepare_run_root, run_root, run_root_override,
};
use crate::signals::{Sig, Signals};
use crate::state;
use crate::sys;
use crate::time;

/// A line on stdout. A reader that went away (`run-chain check | head -1`) is no error:
/// what it did not read is simply not printed (println! panics there).
macro_rules! say {
    () => {
        say!("")
    };
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// How long past the old instance's graces the new one waits before SIGKILL.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(5);

/// Run the command line; returns the exit status.
pub fn main(cli: Cli) -> Result<u8> {
    if cli.command.is_some() {
        let r = &cli.run;
        let given = [
            ("--once", r.once),
            ("--no-kill-concurrent", r.no_kill_concurrent),
            ("--name", r.name.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(Error::Usage(format!(
                "{flag} is for running a chain (run-chain [OPTIONS] TASK...), not for a subcommand"
            )));
        }
    }
    match cli.command {
        None => run(&cli.common, &cli.run),
        Some(Command::Check) => check(&cli.common),
        Some(Command::Stop { chain, now }) => stop(&cli.common, &chain, now),
        Some(Command::Kick { chain }) => kick(&cli.common, &chain),
        Some(Command::Status { json }) => {
            crate::report::status(&looked_run_root(&cli.common)?, json)
        }
        Some(Command::History {
            task,
            chain,
            limit,
            json,
        }) => {
            let known = Config::load(&config_path(&cli.common))
                .ok()
                .map(|c| c.tasks.contains_key(&task));
            if limit == 0 {
                return Err(Error::Usage("--limit: expected 1 or more".into()));
            }
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            crate::report::history(
                &looked_run_root(&cli.common)?,
                &task,
                chain.as_deref(),
                limit,
                json,
                known,
            )
        }
        Some(Command::Log {
            task,
            run_id,
            chain,
        }) => crate::report::log(
            &looked_run_root(&cli.common)?,
            &task,
            run_id,
            chain.as_deref(),
        ),
        Some(Command::Metrics) => {
            let root = looked_run_root(&cli.common)?;
            let t0 = std::time::Instant::now();
            let snap = crate::metrics::collect(&root).map_err(Error::Internal)?;
            let text = crate::metrics::render(&snap, Some(t0.elapsed().as_secs_f64()));
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            Ok(exit::OK)
        }
        Some(Command::Exporter { listen }) => {
            crate::exporter::serve(looked_run_root(&cli.common)?, &listen)
        }
        Some(Command::MailTest) => mail_test(&cli.common),
    }
}

fn check(common: &Common) -> Result<u8> {
    let path = config_path(common);
    let config = Config::load(&path)?;
    if config.tasks.is_empty() {
        return Err(Error::config_key(
            &config.file,
            "tasks",
            "no task is defined: expected at least one [tasks.NAME] section with `command` or `argv`",
        ));
    }
    let root = run_root(common, Some(&config))?;
    let from = if common.run_root.is_some() {
        "from --run-root"
    } else if run_root_override(common).is_some() {
        "from RUN_ROOT"
    } else if config.run_root.is_some() {
        "from the config"
    } else {
        "the default: var/run beside the config"
    };
    use std::io::Write as _;
    let _ = std::io::stdout()
        .lock()
        .write_all(check_text(&config, &root, from).as_bytes());
    Ok(exit::OK)
}

/// A key as TOML writes it: bare where it can be, else quoted.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        toml_str(k)
    }
}

/// A string value as TOML writes it.
fn toml_str(v: &str) -> String {
    toml::Value::String(v.to_string()).to_string()
}

/// A section of `check`'s report: its header (None: the top level) and its `key = value`
/// rows; a key that starts with `#` is a comment line of its own.
type Section = (Option<String>, Vec<(String, String)>);

/// `check`'s report from its sections, every `=` in one column.
fn render_sections(sections: &[Section]) -> String {
    use std::fmt::Write as _;
    let is_comment = |k: &str| k.starts_with('#');
    let width = sections
        .iter()
        .flat_map(|(_, rows)| rows)
        .filter(|(k, _)| !is_comment(k))
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (header, rows) in sections {
        if let Some(h) = header {
            let _ = writeln!(out, "\n[{h}]");
        }
        for (k, v) in rows {
            if is_comment(k) {
                let _ = writeln!(out, "{k}");
            } else {
                let _ = writeln!(out, "{k:<width$} = {v}");
            }
        }
    }
    out
}

/// `check`'s report: the config as run-chain reads it, written as TOML, every default
/// resolved into every task and every value in the config's own form ("15m", "64KiB",
/// "opportunistic"), so that a line can be copied back into the file. `root_from` says
/// where RUN_ROOT came from.
fn check_text(config: &Config, root: &Path, root_from: &str) -> String {
    let mut sections: Vec<Section> = Vec::new();
    let path = |p: &Path| toml_str(&p.display().to_string());
    let dur = |d: Duration| toml_str(&config::fmt_duration(d));
    let row = |k: &str, v: String| (k.to_string(), v);
    sections.push((
        None,
        vec![
            row(
                &format!(
                    "# {} (digest {}): valid; every default resolved",
                    config.file.display(),
                    config.digest
                ),
                String::new(),
            ),
            row("run_root", format!("{}  # {root_from}", path(root))),
        ],
    ));
    for t in config.tasks.values() {
        let mut rows = Vec::new();
        match &t.program {
            Program::Shell(c) => rows.push(row(
                "command",
                format!("{}  # run by /bin/sh -c", toml_str(c)),
            )),
            Program::Argv(v) => rows.push(row(
                "argv",
                toml::Value::Array(v.iter().map(|a| toml::Value::String(a.clone())).collect())
                    .to_string(),
            )),
        }
        rows.push(row("cwd", path(&t.cwd)));
        for (k, v) in &t.env {
            rows.push((format!("env.{}", toml_key(k)), toml_str(v)));
        }
        rows.push(row("success_cooldown", dur(t.timing.success_cooldown)));
        rows.push(row("fail_cooldown", dur(t.timing.fail_cooldown)));
        rows.push(row(
            "timeout",
            t.timing.timeout.map_or_else(|| toml_str("none"), dur),
        ));
        rows.push(row("stop_grace", dur(t.timing.stop_grace)));
        rows.push(row("kill_grace", dur(t.timing.kill_grace)));
        rows.push(row(
            "non_recoverable_downtime",
            dur(t.non_recoverable_downtime),
        ));
        rows.push(row("keep_runs_for", dur(t.keep_runs_for)));
        rows.push(row("keep_runs_max", t.keep_runs_max.to_string()));
        // A size with a unit is a string in the config, a number of bytes a number.
        let size = config::fmt_size(t.keep_output as u64);
        let size = if size.bytes().all(|b| b.is_ascii_digit()) {
            size
        } else {
            toml_str(&size)
        };
        rows.push(row("keep_output", size));
        if let Some(n) = t.nice {
            rows.push(row("nice", n.to_string()));
        }
        if let Some(g) = &t.group {
            rows.push(row("group", toml_str(g)));
        }
        sections.push((Some(format!("tasks.{}", toml_key(&t.name))), rows));
    }
    for (name, g) in &config.groups {
        sections.push((
            Some(format!("groups.{}", toml_key(name))),
            vec![row("max_running", g.max_running.to_string())],
        ));
    }
    if let Some(e) = &config.email {
        let strs = |v: &[String]| {
            toml::Value::Array(v.iter().map(|a| toml::Value::String(a.clone())).collect())
                .to_string()
        };
        let mut rows = vec![row("to", strs(&e.to))];
        if let Some(f) = &e.from {
            rows.push(row("from", toml_str(f)));
        }
        match (&e.smtp, &e.sendmail) {
            (Some(u), _) => {
                rows.push(row("smtp", toml_str(u)));
                rows.push(row("tls", toml_str(e.tls.as_str())));
            }
            (_, Some(s)) => rows.push(row("sendmail", path(s))),
            _ => rows.push(row(
                &format!(
                    "# no smtp and no sendmail: alerts are written as .eml files to {}",
                    root.join("mail").display()
                ),
                String::new(),
            )),
        }
        if let Some(f) = &e.ca_file {
            rows.push(row("ca_file", path(f)));
        }
        if let Some(f) = &e.password_file {
            rows.push(row("password_file", path(f)));
        }
        if let Some(v) = &e.password_env {
            rows.push(row("password_env", toml_str(v)));
        }
        rows.push(row(
            "max_alerts_per_hour",
            e.max_alerts_per_hour.to_string(),
        ));
        sections.push((Some("email".into()), rows));
    }
    render_sections(&sections)
}

fn run(common: &Common, args: &RunArgs) -> Result<u8> {
    if args.tasks.is_empty() {
        return Err(Error::Usage(
            "no task given: run-chain [OPTIONS] TASK... (see run-chain --help)".into(),
        ));
    }
    for (i, t) in args.tasks.iter().enumerate() {
        // A coming command's name (`run-chain serve`) is left to the config below.
        if RESERVED_NAMES.contains(&t.as_str()) && !COMING_COMMANDS.contains(&t.as_str()) {
            return Err(Error::Usage(format!(
                "{t:?} is a subcommand, not a task (no task may be named so): give it alone, as `run-chain {t} ...`, not after task names"
            )));
        }
        if args.tasks[..i].contains(t) {
            return Err(Error::Usage(format!(
                "task {t:?} appears twice in the chain; a chain runs each task once per round"
            )));
        }
    }
    let path = config_path(common);
    // A config that defines a task named like a coming command (`serve`) is refused here:
    // exit 78, naming the file and the key, saying to rename the task.
    let config = Config::load(&path)?;
    if let Some(t) = args
        .tasks
        .iter()
        .find(|t| COMING_COMMANDS.contains(&t.as_str()))
    {
        return Err(Error::Usage(format!(
            "`{t}` is not a command of run-chain {} (it is reserved for a coming version), and no task may be named so",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let tasks = config.chain_tasks(&args.tasks)?;
    let chain_name = match &args.name {
        Some(n) => {
            config::check_name(n).map_err(|m| Error::Config(format!("--name: {m}")))?;
            n.clone()
        }
        None => {
            let n = args.tasks.join("_");
            config::check_name(&n).map_err(|m| {
                Error::Config(format!(
                    "the chain name made from the task names is not valid ({m}); give one with --name"
                ))
            })?;
            n
        }
    };
    let root = run_root(common, Some(&config))?;
    prepare_run_root(&root)?;

    // Tasks inherit no descriptor: not ours (all close-on-exec), nor those we inherited.
    sys::cloexec_from_3();
    // The guardian first: the process has one thread and no descriptor of its own yet.
    // It records a run it has to end in the store, which it opens from `/`.
    let recording = crate::guardian::Recording {
        store: std::path::absolute(crate::store::path(&root))
            .unwrap_or_else(|_| crate::store::path(&root)),
        chain: chain_name.clone(),
        instance: crate::store::Instance {
            host: sys::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_digest: config.digest.clone(),
            started_ms: time::wall_ms(),
        },
    };
    let guardian = Guardian::spawn(Some(recording))?;
    let signals = Signals::install()?;
    let mode = if args.once { Mode::Once } else { Mode::Forever };
    let takeover_limit = tasks
        .iter()
        .map(|t| t.timing.stop_grace + t.timing.kill_grace)
        .max()
        .unwrap_or_default()
        + TAKEOVER_MARGIN;
    let Some(pidfile) = acquire(
        &root,
        &chain_name,
        mode == Mode::Once || args.no_kill_concurrent,
        takeover_limit,
        &signals,
    )?
    else {
        log::warn!(
            "{chain_name}: stopped while waiting for the running instance to hand over; if it was already asked to hand over, it stops too: launch the chain again to start it"
        );
        log::info!("{chain_name}: exiting with status {}", exit::OK);
        return Ok(exit::OK);
    };
    crate::process::become_subreaper();

    let state_path = state::path(&root, &chain_name);
    let base_state = match state::load(&state_path) {
        Ok(s) => s,
        Err(msg) => {
            log::warn!("{chain_name}: {msg}");
            state::State::default()
        }
    };
    if !wait_for_the_old_run(&chain_name, &base_state, &signals)? {
        log::warn!("{chain_name}: stopped while waiting for the previous run's processes to end");
        log::info!("{chain_name}: exiting with status {}", exit::OK);
        return Ok(exit::OK);
    }
    // A SIGHUP that came while the launch waited: the config is read again now, before
    // the first run, as a running chain would on SIGHUP.
    let root_from_config = run_root_override(common).is_none();
    let (config, tasks, reloaded) = if signals.take_hup_before_running() {
        reload_before_running(
            &chain_name,
            &args.tasks,
            &root,
            root_from_config,
            config,
            tasks,
        )
    } else {
        (config, tasks, false)
    };
    let chain_view = driver::chain_tasks(&tasks);
    let clocks = state::Clocks {
        mono: time::mono_now(),
        wall_ms: time::wall_ms(),
        boot_id: sys::boot_id(),
    };
    let (mut resume, warning) = state::resume(&base_state, &chain_view, &clocks);
    if let Some(w) = warning {
        log::warn!("{chain_name}: {w}");
    }
    seed_run_ids(&root, &chain_name, &chain_view, &mut resume);
    log::info!(
        "{chain_name}: running as pid {} (run-chain {}, config {} digest {}){}",
        std::process::id(),
        env!("CARGO_PKG_VERSION"),
        config.file.display(),
        config.digest,
        if mode == Mode::Once { ", once" } else { "" }
    );
    let chain = Chain::new(chain_view, mode, resume);
    let driver = Driver::new(
        chain_name,
        args.tasks.clone(),
        config,
        tasks,
        root,
        mode,
        chain,
        signals,
        guardian,
        pidfile,
        base_state,
    )
    .with_root_from_config(root_from_config)
    // As a running chain on SIGHUP: a changed cooldown applies to the one carried over.
    .with_reconfigure_at_start(reloaded);
    driver.run()
}

/// The config read again for a SIGHUP received while the launch waited to run (see
/// [`Signals::drain_waiting`]); on an error, the one validated at launch is kept, as a
/// running chain keeps its config when a reload fails, and so it is when the new config
/// would move the chain to another RUN_ROOT (see [`moved_run_root`]).
fn reload_before_running(
    chain: &str,
    names: &[String],
    root: &Path,
    root_from_config: bool,
    config: Config,
    tasks: Vec<crate::config::Task>,
) -> (Config, Vec<crate::config::Task>, bool) {
    let loaded = Config::load(&config.file).and_then(|c| {
        let t = c.chain_tasks(names)?;
        if let Some(e) = moved_run_root(chain, root_from_config, root, &c) {
            return Err(e);
        }
        Ok((c, t))
    });
    match loaded {
        Ok((c, t)) => {
            log::info!(
                "{chain}: SIGHUP: reloaded {} (digest {})",
                c.file.display(),
                c.digest
            );
            (c, t, true)
        }
        Err(e) => {
            log::error!("{chain}: SIGHUP: keeping the config validated at launch: {e}");
            (config, tasks, false)
        }
    }
}

/// Run ids for the tasks CHAIN.state has none for (a lost or unreadable state file, or a
/// task new to the chain), from the record store: ids keep increasing across restarts
/// even then. Without a store (or when it cannot be read: a warning) they start at 1.
fn seed_run_ids(
    root: &Path,
    chain: &str,
    view: &[crate::chain::ChainTask],
    resume: &mut crate::chain::Resume,
) {
    let tasks: Vec<String> = view
        .iter()
        .map(|t| t.name.clone())
        .filter(|n| !resume.run_ids.contains_key(n))
        .collect();
    if tasks.is_empty() {
        return;
    }
    match crate::store::last_run_ids(root, chain) {
        Ok(ids) => {
            for (task, id) in ids {
                if id > 0 && tasks.contains(&task) {
                    log::info!("{chain}: task {task} continues from run id {id}, as recorded in the store (CHAIN.state had none)");
                    resume.run_ids.insert(task, id);
                }
            }
        }
        Err(e) => log::warn!(
            "{chain}: CHAIN.state holds no run id for {}, and the store cannot tell the last one ({e}); starting from 1",
            tasks.join(", ")
        ),
    }
}

/// The previous instance ended during a run (it was killed, or crashed: CHAIN.state still
/// names the run): wait until its guardian, which sends that run's process group SIGTERM
/// and SIGKILL after its kill grace, has exited, so that no task of the chain starts while
/// the old run is still alive. Ok(false): stopped by a signal while waiting.
fn wait_for_the_old_run(chain: &str, st: &state::State, signals: &Signals) -> Result<bool> {
    let (Some(task), Some(pid), Some(start)) =
        (&st.running_task, st.guardian_pid, st.guardian_start)
    else {
        return Ok(true);
    };
    // The guardian's own boot (a --once instance keeps the chain's older `boot_id`).
    let same_boot = st.guardian_boot.is_some() && st.guardian_boot == sys::boot_id();
    if !same_boot || pid <= 1 || sys::start_time(pid) != Some(start) {
        return Ok(true);
    }
    let Ok(pidfd) = sys::pidfd_open(pid) else {
        return Ok(true);
    };
    // Still that process (not a PID reused between the two looks)?
    if sys::start_time(pid) != Some(start) {
        return Ok(true);
    }
    log::warn!(
        "{chain}: the previous instance ended during task {task} run {}; waiting for its guardian (PID {pid}) to end what that run left",
        st.running_run_id.unwrap_or(0)
    );
    loop {
        let mut fds = [
            sys::pollfd(pidfd.as_raw_fd(), libc::POLLIN),
            sys::pollfd(signals.fd(), libc::POLLIN),
        ];
        sys::ppoll(&mut fds, None).map_err(|e| Error::os("wait in ppoll", e))?;
        if fds[0].revents != 0 {
            log::info!("{chain}: the previous run's processes have ended");
            return Ok(true);
        }
        if signals
            .drain_waiting(chain)
            .iter()
            .any(|s| matches!(s, Sig::Term | Sig::Int | Sig::Quit))
        {
            return Ok(false);
        }
    }
}

/// Take the chain's lock, taking over from a running instance unless `no_takeover`.
/// Ok(None): stopped by SIGTERM/SIGINT while waiting.
fn acquire(
    root: &Path,
    chain: &str,
    no_takeover: bool,
    limit: Duration,
    signals: &Signals,
) -> Result<Option<PidFile>> {
    let mut pf = PidFile::open(root, chain)?;
    if no_takeover {
        if !pf.try_lock()? {
            let who = pf
                .holder()
                .map_or_else(|| "another process".to_string(), |p| format!("PID {p}"));
            return Err(Error::Busy(format!(
                "chain {chain} is already running ({who} holds {}); not taking over",
                pf.path().display()
            )));
        }
        if let Some(n) = next::newer_than_me(root, chain) {
            pf.unlock();
            return Err(Error::Busy(format!(
                "chain {chain} is being taken over by a newer launch (PID {n}); not starting"
            )));
        }
        pf.write_pid()?;
        return Ok(Some(pf));
    }

    next::claim(root, chain)?;
    let inotify = nix::sys::inotify::Inotify::init(
        nix::sys::inotify::InitFlags::IN_CLOEXEC | nix::sys::inotify::InitFlags::IN_NONBLOCK,
    )
    .map_err(|e| Error::os("create an inotify instance", std::io::Error::from(e)))?;
    use nix::sys::inotify::AddWatchFlags as W;
    inotify
        .add_watch(
            root,
            W::IN_CLOSE_WRITE | W::IN_CLOSE_NOWRITE | W::IN_MOVED_TO | W::IN_MODIFY,
        )
        .map_err(|e| Error::os(format!("watch {}", root.display()), std::io::Error::from(e)))?;

    let pid_name = std::ffi::OsString::from(format!("{chain}.pid"));
    let next_name = std::ffi::OsString::from(format!("{chain}.next"));

    struct Asked {
        pid: i32,
        pidfd: std::os::fd::OwnedFd,
        kill_at: Duration,
        killed: bool,
    }
    let mut asked: Option<Asked> = None;
    let mut warned = false;
    loop {
        if let Some(n) = next::newer_than_me(root, chain) {
            return Err(Error::Busy(format!(
                "superseded by a newer launch of chain {chain} (PID {n}); giving up"
            )));
        }
        if pf.try_lock()? {
            if let Some(n) = next::newer_than_me(root, chain) {
                pf.unlock();
                return Err(Error::Busy(format!(
                    "superseded by a newer launch of chain {chain} (PID {n}); giving up"
                )));
            }
            pf.write_pid()?;
            return Ok(Some(pf));
        }
        let now = time::mono_now();
        if asked.is_none() {
            if let Some((pid, pidfd)) = pf.holder_pidfd() {
                // Every launch records itself in CHAIN.next before it takes the lock, so a
                // holder that is newer than us is visible there by now: a newer launch may
                // have locked between our check above and this look-up. Never signal it.
                if let Some(n) = next::newer_than_me(root, chain) {
                    return Err(Error::Busy(format!(
                        "superseded by a newer launch of chain {chain} (PID {n}); giving up"
                    )));
                }
                log::info!(
                    "{chain}: running as PID {pid}; asking it to hand over (SIGTERM) and waiting"
                );
                if let Err(e) = sys::pidfd_signal(&pidfd, libc::SIGTERM) {
                    log::warn!("{chain}: failed to signal PID {pid}: {e}");
                }
                asked = Some(Asked {
                    pid,
                    pidfd,
                    kill_at: now + limit,
                    killed: false,
                });
            } else if !warned {
                log::warn!(
                    "{chain}: {} is locked by a process that cannot be confirmed as its holder (PID in the file: {}); waiting for the lock",
                    pf.path().display(),
                    pf.text_pid().map_or("none".into(), |p| p.to_string())
                );
                warned = true;
            }
        }
        let mut fds = vec![
            sys::pollfd(signals.fd(), libc::POLLIN),
            sys::pollfd(inotify.as_fd_raw(), libc::POLLIN),
        ];
        if let Some(a) = &asked {
            fds.push(sys::pollfd(a.pidfd.as_raw_fd(), libc::POLLIN));
        }
        let deadline = match &asked {
            Some(a) if !a.killed => Some(a.kill_at),
            Some(_) => None,
            // An unconfirmed holder may be one that has just locked and not yet written
            // its PID (the write wakes us), or a stranger: look again now and then.
            None => Some(now + Duration::from_secs(1)),
        };
        // Wait for a signal, the old instance's exit, the deadline, or a change to this
        // chain's pidfile or CHAIN.next. Other files of RUN_ROOT (other chains' state) and
        // our own reads of CHAIN.next (a close without writing) are no reason to look again:
        // woken by those, the wait went on spinning for the whole hand-over.
        loop {
            for f in &mut fds {
                f.revents = 0;
            }
            let timeout = deadline.map(|d| d.saturating_sub(time::mono_now()));
            sys::ppoll(&mut fds, timeout).map_err(|e| Error::os("wait in ppoll", e))?;
            let mut relevant = false;
            while let Ok(events) = inotify.read_events() {
                if events.is_empty() {
                    break;
                }
                relevant |= events
                    .iter()
                    .any(|ev| watched_change(ev, &pid_name, &next_name));
            }
            let woke = fds[0].revents != 0 || fds.get(2).is_some_and(|f| f.revents != 0);
            if woke || relevant || deadline.is_some_and(|d| time::mono_now() >= d) {
                break;
            }
        }
        for sig in signals.drain_waiting(chain) {
            if matches!(sig, Sig::Term | Sig::Int | Sig::Quit) {
                return Ok(None);
            }
        }
        let now = time::mono_now();
        if let Some(a) = &mut asked {
            if fds.len() > 2 && fds[2].revents != 0 {
                // The old instance has exited; try the lock again (and confirm any new holder).
                asked = None;
            } else if !a.killed && now >= a.kill_at {
                log::warn!(
                    "{chain}: PID {} did not hand over within {}; killing it",
                    a.pid,
                    crate::time::fmt_dur(limit)
                );
                let _ = sys::pidfd_signal(&a.pidfd, libc::SIGKILL);
                a.killed = true;
            }
        }
    }
}

/// Whether an inotify event on RUN_ROOT may mean the chain's lock changed hands: the
/// pidfile closed (a holder's last descriptor: its lock is gone) or written (a new holder's
/// PID), or CHAIN.next replaced or written (a newer launch).
fn watched_change(
    ev: &nix::sys::inotify::InotifyEvent,
    pid_name: &std::ffi::OsStr,
    next_name: &std::ffi::OsStr,
) -> bool {
    use nix::sys::inotify::AddWatchFlags as W;
    let Some(name) = ev.name.as_deref() else {
        // The queue overflowed (or an event on the folder itself): look again.
        return true;
    };
    if name == pid_name {
        ev.mask
            .intersects(W::IN_CLOSE_WRITE | W::IN_CLOSE_NOWRITE | W::IN_MODIFY | W::IN_MOVED_TO)
    } else if name == next_name {
        ev.mask
            .intersects(W::IN_CLOSE_WRITE | W::IN_MODIFY | W::IN_MOVED_TO)
    } else {
        false
    }
}

trait RawInotify {
    fn as_fd_raw(&self) -> i32;
}

impl RawInotify for nix::sys::inotify::Inotify {
    fn as_fd_raw(&self) -> i32 {
        use std::os::fd::AsFd;
        self.as_fd().as_raw_fd()
    }
}

/// Open the chain's pidfile for a command that only looks, and find its verified holder.
fn holder_of(common: &Common, chain: &str) -> Result<Option<(i32, std::os::fd::OwnedFd)>> {
    config::check_name(chain).map_err(|m| Error::Usage(format!("chain {chain:?}: {m}")))?;
    let root = looked_run_root(common)?;
    let Some(pf) = PidFile::open_existing(&root, chain)? else {
        return Err(Error::Usage(unknown_chain(
            chain,
            &root,
            &chains_and_tasks(&root),
        )));
    };
    Ok(pf.holder_pidfd())
}

/// The chains of RUN_ROOT (a `CHAIN.pid` each, never removed), each with its tasks as its
/// `CHAIN.state` knows them: its task list, and the tasks it has run (a `--once` launch
/// writes no list). None if the state cannot be read; no chain if RUN_ROOT cannot be read.
fn chains_and_tasks(root: &Path) -> Vec<(String, Vec<String>)> {
    crate::holders::chains(root)
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let st = state::load(&state::path(root, &c)).unwrap_or_default();
            let mut tasks = st.tasks;
            for t in st.run_ids.into_keys() {
                if !tasks.contains(&t) {
                    tasks.push(t);
                }
            }
            (c, tasks)
        })
        .collect()
}

/// What `stop`/`kick` say of a chain that RUN_ROOT does not hold: the chains it does hold,
/// or that it holds none, and the chains that have a task so named (a task name given for
/// a chain's).
fn unknown_chain(chain: &str, root: &Path, known: &[(String, Vec<String>)]) -> String {
    let mut msg = format!("no chain named {chain:?} in {}", root.display());
    let of: Vec<&str> = known
        .iter()
        .filter(|(_, tasks)| tasks.iter().any(|t| t == chain))
        .map(|(c, _)| c.as_str())
        .collect();
    if !of.is_empty() {
        msg.push_str(&format!(
            "; {chain} is a task of chain{} {}",
            if of.len() > 1 { "s" } else { "" },
            of.join(", ")
        ));
    }
    if known.is_empty() {
        msg.push_str(
            "; no chain has run there (is RUN_ROOT the right one? --run-root, RUN_ROOT or run_root in the config)",
        );
    } else {
        let names: Vec<&str> = known.iter().map(|(c, _)| c.as_str()).collect();
        msg.push_str(&format!("; the chains there: {}", names.join(", ")));
    }
    msg
}

fn stop(common: &Common, chain: &str, now: bool) -> Result<u8> {
    let Some((pid, pidfd)) = holder_of(common, chain)? else {
        say!("chain {chain} is not running");
        return Ok(exit::OK);
    };
    // A launch waiting for this instance to hand over (an upgrade under way) would take the
    // lock as soon as it exits, and the chain would go on: it is asked to give up first (a
    // waiting launch stops at once on SIGTERM).
    let mut waiting = None;
    if let Ok(root) = looked_run_root(common) {
        if let Some((w, wfd)) = next::waiting_launch(&root, chain, pid) {
            if sys::pidfd_signal(&wfd, libc::SIGTERM).is_ok() {
                eprintln!(
                    "run-chain: asked the launch of chain {chain} waiting to take over (PID {w}) to give up"
                );
                waiting = Some(wfd);
            }
        }
    }
    let sig = if now { libc::SIGQUIT } else { libc::SIGTERM };
    sys::pidfd_signal(&pidfd, sig).map_err(|e| Error::os(format!("signal PID {pid}"), e))?;
    eprintln!(
        "run-chain: asked chain {chain} (PID {pid}) to stop{}; waiting for it to exit",
        if now { " now" } else { "" }
    );
    // Until the holder has exited, and the waiting launch too (it may have taken the lock
    // in the meantime: then it stops on the SIGTERM it has, after its running task's grace).
    for fd in std::iter::once(&pidfd).chain(waiting.as_ref()) {
        let mut fds = [sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
        loop {
            sys::ppoll(&mut fds, None).map_err(|e| Error::os("wait in ppoll", e))?;
            if fds[0].revents != 0 {
                break;
            }
        }
    }
    say!("chain {chain} (PID {pid}) stopped");
    Ok(exit::OK)
}

fn kick(common: &Common, chain: &str) -> Result<u8> {
    let Some((pid, pidfd)) = holder_of(common, chain)? else {
        say!("chain {chain} is not running; nothing to kick");
        return Ok(exit::OK);
    };
    sys::pidfd_signal(&pidfd, libc::SIGUSR1)
        .map_err(|e| Error::os(format!("signal PID {pid}"), e))?;
    say!("kicked chain {chain} (PID {pid})");
    Ok(exit::OK)
}

/// `mail-test`: send one test alert through the configured transport, now, and say
/// what the server (or sendmail, or the file system) answered.
fn mail_test(common: &Common) -> Result<u8> {
    let config = Config::load(&config_path(common))?;
    if config.email.is_none() {
        eprintln!(
            "run-chain: {} has no [email] section: alerts are written as files to root@localhost in RUN_ROOT/mail/",
            config.file.display()
        );
    }
    let email = crate::driver::email_or_default(&config);
    let root = run_root(common, Some(&config))?;
    prepare_run_root(&root)?;
    let now = time::wall_ms();
    let a = crate::alert_mail::AlertMail {
        kind: "test".into(),
        chain: "mail-test".into(),
        task: "mail-test".into(),
        host: sys::hostname(),
        command: "run-chain mail-test".into(),
        outcome: "none: this is a test of the alert transport".into(),
        duration: "-".into(),
        streak_start: "-".into(),
        streak_length: "-".into(),
        failures: 0,
        next_attempt: "-".into(),
        held_back: 0,
        output: b"If you can read this, run-chain's alerts reach you.\n".to_vec(),
        output_bytes: 52,
        at_ms: now,
        ..Default::default()
    };
    let id = crate::mailer::message_id(&a);
    let bytes = crate::mailer::build(&email, &a, &id).map_err(Error::Config)?;
    let transport = match (&email.smtp, &email.sendmail) {
        (Some(u), _) => format!("SMTP {u}"),
        (_, Some(s)) => format!("sendmail {}", s.display()),
        _ => format!("files in {}", root.join("mail").display()),
    };
    let file = PathBuf::from(format!("{now:013}-mail-test.eml"));
    let children = crate::mailer::Children::default();
    match crate::mailer::deliver(&email, &root, &file, &bytes, &children) {
        Ok(said) => {
            say!("sent a test alert to {} through {transport}: {said}", email.to.join(", "));
            say!("Message-ID: {id}");
            Ok(exit::OK)
        }
        // The message names the server (or sendmail, or the file) itself, once.
        Err(crate::mailer::SendError::Transient(m)) => Err(Error::Busy(format!(
            "failed to send the test alert: {m}; a temporary failure: alerts are retried"
        ))),
        Err(crate::mailer::SendError::Permanent(m)) => Err(Error::Internal(format!(
            "failed to send the test alert: {m}; a permanent failure: alerts are not retried (they go to RUN_ROOT/outbox/failed/)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[defaults]
keep_runs_for = "30d"
timeout = "1h 30m"
[email]
to = ["admin@example.com"]
smtp = "smtp://mx.example.com:587"
tls = "required"
password_env = "PW"
[tasks.a]
command = 'echo "a" >> out'
cwd = "/srv"
env = { A_VERY_LONG_VARIABLE_NAME = "1", "odd name" = "x" }
keep_output = 1000
group = "db"
[tasks."b.x"]
argv = ["printf", "a 'b' \"c\""]
keep_output = "1MiB"
timeout = "none"
cwd = "/"
[groups.db]
max_running = 2
"#;

    /// `check` writes the config as the file would: read back, it is the same config.
    #[test]
    fn check_text_reads_back_as_the_same_config() {
        let file = Path::new("/etc/rc/tasks.toml");
        let c = Config::parse(CONFIG, file).expect("valid");
        let text = check_text(&c, Path::new("/var/run/rc"), "from the config");
        let back = Config::parse(&text, file).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert_eq!(back.tasks, c.tasks, "{text}");
        assert_eq!(back.groups, c.groups, "{text}");
        assert_eq!(back.email, c.email, "{text}");
        assert_eq!(back.run_root, Some(PathBuf::from("/var/run/rc")), "{text}");
        for line in [
            "tls                           = \"required\"",
            "keep_output                   = 1000",
            "keep_output                   = \"1MiB\"",
            "keep_runs_for                 = \"30days\"",
            "timeout                       = \"1h 30m\"",
            "timeout                       = \"none\"",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    /// Every `key = value` line has its `=` in the same column.
    #[test]
    fn check_text_is_aligned() {
        let c = Config::parse(CONFIG, Path::new("/etc/rc/tasks.toml")).expect("valid");
        let text = check_text(&c, Path::new("/var/run/rc"), "from the config");
        let columns: std::collections::BTreeSet<usize> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.is_empty())
            .map(|l| l.find(" = ").unwrap_or_else(|| panic!("{l:?}")))
            .collect();
        assert_eq!(columns.len(), 1, "{text}");
    }

    #[test]
    fn an_unknown_chain_is_answered_with_the_chains_there() {
        let root = Path::new("/r");
        let known = vec![
            ("a_b".to_string(), vec!["a".to_string(), "b".to_string()]),
            ("c".to_string(), vec!["c".to_string(), "a".to_string()]),
            ("old".to_string(), vec![]),
        ];
        let m = unknown_chain("a", root, &known);
        assert_eq!(
            m,
            "no chain named \"a\" in /r; a is a task of chains a_b, c; the chains there: a_b, c, old"
        );
        let m = unknown_chain("x", root, &known[..1]);
        assert_eq!(m, "no chain named \"x\" in /r; the chains there: a_b");
        let m = unknown_chain("x", root, &[]);
        assert!(m.contains("no chain has run there"), "{m}");
    }
}
