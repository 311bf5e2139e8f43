//! The config file: TOML text -> a validated [`Config`].
//!
//! Parsing is two steps. serde reads the text into `Raw*` structs (`raw`) that reject
//! unknown keys and wrong types (toml's message then shows the line and the key). Then
//! [`Config::parse`] checks meanings (durations, sizes, names, command vs argv,
//! groups) and resolves `[defaults]` into every task, so that the rest of the program
//! only ever sees complete, valid values. Both steps are pure: the caller reads the
//! file, so a test can hand in any text. Every error names the file, the key and what
//! was expected, and maps to exit status 78.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

mod raw;
mod store;

use raw::{RawConfig, RawDefaults, RawEmail, RawTask, SizeValue};
pub use store::{FleetConfig, FleetTls, PgHost, PgUrl, Scope, Secret};

/// Names that a task may not take, because the command line gives them a meaning of
/// their own: the subcommands of this version, and those of a coming one
/// (`COMING_COMMANDS`). A test in `cli` checks that every subcommand is listed.
pub const RESERVED_NAMES: &[&str] = &[
    "check",
    "status",
    "history",
    "log",
    "stop",
    "kick",
    "metrics",
    "exporter",
    "mail-test",
    "help",
    "serve",
    "run-now",
    "store",
];

/// Subcommands of a coming version (SPEC.md's command line), reserved already: a chain
/// launched as `run-chain store` would otherwise run that command after an upgrade.
pub(crate) const COMING_COMMANDS: &[&str] = &[];

// ---------------------------------------------------------------------------------
// Validated shapes.

/// How a task is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `command = "..."`: run by `/bin/sh -c`.
    Shell(String),
    /// `argv = [...]`: executed directly, `argv[0]` looked up in `PATH`.
    Argv(Vec<String>),
}

impl Program {
    /// The command on one line, for log lines: its first line, with "…" if cut.
    pub(crate) fn short(&self) -> String {
        let full = self.display();
        let mut lines = full.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default();
        let mut out: String = first.chars().take(120).collect();
        if lines.next().is_some() || first.chars().count() > 120 {
            out.push_str(" …");
        }
        out
    }

    /// The command as a user would type it, for logs and messages.
    pub(crate) fn display(&self) -> String {
        match self {
            Program::Shell(c) => c.clone(),
            Program::Argv(v) => v
                .iter()
                .map(|a| {
                    if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                        format!("{a:?}")
                    } else {
                        a.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// The timing of one task: what the state machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub success_cooldown: Duration,
    pub fail_cooldown: Duration,
    pub timeout: Option<Duration>,
    pub stop_grace: Duration,
    pub kill_grace: Duration,
}

/// One task, with every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub name: String,
    pub program: Program,
    /// Absolute or relative to the process's cwd; resolved against the config's folder.
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub nice: Option<i32>,
    pub group: Option<String>,
    pub timing: Timing,
    pub non_recoverable_downtime: Duration,
    pub keep_runs_for: Duration,
    pub keep_runs_max: u64,
    pub keep_output: usize,
}

/// TLS policy for SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Opportunistic,
    Required,
    None,
}

impl TlsMode {
    /// The value as the config writes it (`tls = "opportunistic"`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::Required => "required",
            TlsMode::None => "none",
        }
    }
}

/// The `[email]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub to: Vec<String>,
    pub from: Option<String>,
    pub smtp: Option<String>,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub sendmail: Option<PathBuf>,
    pub max_alerts_per_hour: u32,
}

/// A concurrency group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub max_running: u32,
    /// Where the group's limit holds: this host (kernel locks) or the fleet (slot rows;
    /// only with `[store]`; its behaviour comes in a later stage).
    pub scope: Scope,
}

/// A whole config file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `run_root` from the file, resolved against the file's folder (None: not set).
    pub run_root: Option<PathBuf>,
    pub tasks: BTreeMap<String, Task>,
    pub groups: BTreeMap<String, Group>,
    pub email: Option<Email>,
    /// `[store]`: the fleet's PostgreSQL store (None: SQLite in RUN_ROOT).
    pub store: Option<FleetConfig>,
    /// A digest of the file's text, to tie a run to a deploy.
    pub digest: String,
    /// The tasks whose `kill_grace` is the built-in default (set neither in the task nor
    /// in `[defaults]`): `check` warns about them together.
    pub default_kill_grace: Vec<String>,
}

/// Built-in defaults, used where neither `[defaults]` nor the task sets a key.
pub mod builtin {
    use std::time::Duration;
    pub(crate) const SUCCESS_COOLDOWN: Duration = Duration::from_secs(15 * 60);
    pub(crate) const FAIL_COOLDOWN: Duration = Duration::from_secs(30 * 60);
    pub(crate) const NON_RECOVERABLE_DOWNTIME: Duration = Duration::from_secs(6 * 3600);
    pub(crate) const STOP_GRACE: Duration = Duration::from_secs(30);
    pub(crate) const KILL_GRACE: Duration = Duration::from_secs(5);
    pub const KEEP_RUNS_FOR: Duration = Duration::from_secs(30 * 86400);
    pub const KEEP_RUNS_MAX: u64 = 100_000;
    pub(crate) const KEEP_OUTPUT: usize = 64 * 1024;
    /// The largest `keep_output` accepted: the tail is held in memory.
    pub(crate) const KEEP_OUTPUT_MAX: usize = 64 * 1024 * 1024;
    pub(crate) const MAX_ALERTS_PER_HOUR: u32 = 10;
    /// The largest `max_running` of a group (each slot is a file kept open while waiting).
    pub(crate) const MAX_RUNNING_MAX: u32 = 256;
}

/// Check a chain or task name: 1-100 of letters, digits, `_`, `-`, `.`, not starting
/// with `.`. Returns what is wrong, as a phrase.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("expected a name of 1 to 100 characters, got an empty one".into());
    }
    if name.len() > 100 {
        return Err(format!(
            "expected a name of at most 100 characters, got {}",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err(format!(
            "expected a name not starting with '.', got {name:?}"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "expected only letters, digits, '_', '-' and '.', got {c:?} in {name:?}"
        ));
    }
    Ok(())
}

/// Check a task name: a valid name that is not one of the subcommands, of this version
/// or of a coming one.
pub fn check_task_name(name: &str) -> std::result::Result<(), String> {
    check_name(name)?;
    if COMING_COMMANDS.contains(&name) {
        return Err(format!(
            "{name:?} is reserved for the command `run-chain {name}` of a coming version (a chain launched as `run-chain {name}` would run that command after an upgrade): rename the task, here and where its chain is launched"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "{name:?} is reserved for the command `run-chain {name}`: rename the task, here and where its chain is launched"
        ));
    }
    Ok(())
}

/// Parse a humantime duration, with an error that says what was expected.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("expected a duration such as \"90s\", \"15m\" or \"1h 30m\", got {text:?} ({e})")
    })
}

/// Parse a size: a number of bytes, or a number with a unit (B, KB, KiB, MB, MiB, GB, GiB).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let expected = || {
        format!("expected a size such as \"64KiB\", \"1MiB\" or a number of bytes, got {text:?}")
    };
    let n: u64 = num.parse().map_err(|_| expected())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1024,
        "KB" | "kB" => 1000,
        "M" | "MiB" => 1024 * 1024,
        "MB" => 1000 * 1000,
        "G" | "GiB" => 1024 * 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        _ => return Err(expected()),
    };
    n.checked_mul(mult).ok_or_else(expected)
}

/// A duration as the config writes it ("15m", "1h 30m", "30d", "2.5s" as "2s 500ms"):
/// days, hours, minutes, seconds and milliseconds only, so that [`parse_duration`] reads it
/// back as the same duration (humantime's own form says "1year" for 365.25 days and
/// "1month" for 30.44, which do not read back as the 365d or 31d the config said), down
/// to the millisecond (the config's precision).
pub(crate) fn fmt_duration(d: Duration) -> String {
    const UNITS: [(u128, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut left = d.as_millis();
    if left == 0 {
        return "0s".to_string();
    }
    let mut parts = Vec::new();
    for (unit, name) in UNITS {
        if left >= unit {
            parts.push(format!("{}{name}", left / unit));
            left %= unit;
        }
    }
    parts.join(" ")
}

/// A size as the config writes it: in the largest binary unit that divides it ("64KiB",
/// "1MiB"), else in bytes (`1000`). [`parse_size`] reads it back as the same size.
pub(crate) fn fmt_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A stable 64-bit FNV-1a digest, as 16 hex digits.
pub(crate) fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::config_key(self.file, key, msg)
    }

    fn duration(&self, key: &str, v: &Option<String>) -> Result<Option<Duration>> {
        match v {
            None => Ok(None),
            Some(s) => parse_duration(s).map(Some).map_err(|m| self.err(key, m)),
        }
    }

    /// A duration that must not be zero.
    fn positive(&self, key: &str, v: &Option<String>) -> Result<Option<Duration>> {
        match self.duration(key, v)? {
            Some(d) if d.is_zero() => Err(self.err(
                key,
                "expected a positive duration such as \"6h\" (it is the alert window), got zero",
            )),
            other => Ok(other),
        }
    }

    /// A duration that may be "none" (no limit).
    fn opt_duration(&self, key: &str, v: &Option<String>) -> Result<Option<Option<Duration>>> {
        match v {
            None => Ok(None),
            Some(s) if s.trim().eq_ignore_ascii_case("none") => Ok(Some(None)),
            Some(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() => Err(self.err(
                    key,
                    "expected a positive duration or \"none\", got zero (use \"none\" for no timeout)",
                )),
                Ok(d) => Ok(Some(Some(d))),
                Err(m) => Err(self.err(key, format!("{m}, or \"none\""))),
            },
        }
    }

    fn size(&self, key: &str, v: &Option<SizeValue>) -> Result<Option<usize>> {
        let n = match v {
            None => return Ok(None),
            Some(SizeValue::Int(i)) => u64::try_from(*i).map_err(|_| {
                self.err(key, format!("expected a size of 0 or more bytes, got {i}"))
            })?,
            Some(SizeValue::Text(s)) => parse_size(s).map_err(|m| self.err(key, m))?,
        };
        if n > builtin::KEEP_OUTPUT_MAX as u64 {
            return Err(self.err(
                key,
                format!("expected at most 64MiB (the tail is kept in memory), got {n} bytes"),
            ));
        }
        usize::try_from(n)
            .map(Some)
            .map_err(|_| self.err(key, "size too large"))
    }

    fn count(&self, key: &str, v: Option<i64>) -> Result<Option<u64>> {
        match v {
            None => Ok(None),
            Some(i) if i >= 1 => Ok(Some(i as u64)),
            Some(i) => Err(self.err(
                key,
                format!("expected a whole number of 1 or more, got {i}"),
            )),
        }
    }
}

/// The [defaults] keys after validation; `None` where the file says nothing.
#[derive(Default)]
struct Layer {
    success_cooldown: Option<Duration>,
    fail_cooldown: Option<Duration>,
    non_recoverable_downtime: Option<Duration>,
    timeout: Option<Option<Duration>>,
    stop_grace: Option<Duration>,
    kill_grace: Option<Duration>,
    keep_runs_for: Option<Duration>,
    keep_runs_max: Option<u64>,
    keep_output: Option<usize>,
}

impl Layer {
    fn read(ctx: &Ctx, prefix: &str, d: &RawDefaults) -> Result<Layer> {
        let k = |name: &str| format!("{prefix}.{name}");
        Ok(Layer {
            success_cooldown: ctx.duration(&k("success_cooldown"), &d.success_cooldown)?,
            fail_cooldown: ctx.duration(&k("fail_cooldown"), &d.fail_cooldown)?,
            non_recoverable_downtime: ctx
                .positive(&k("non_recoverable_downtime"), &d.non_recoverable_downtime)?,
            timeout: ctx.opt_duration(&k("timeout"), &d.timeout)?,
            stop_grace: ctx.duration(&k("stop_grace"), &d.stop_grace)?,
            kill_grace: ctx.duration(&k("kill_grace"), &d.kill_grace)?,
            keep_runs_for: ctx.duration(&k("keep_runs_for"), &d.keep_runs_for)?,
            keep_runs_max: ctx.count(&k("keep_runs_max"), d.keep_runs_max)?,
            keep_output: ctx.size(&k("keep_output"), &d.keep_output)?,
        })
    }
}

impl RawTask {
    fn defaults_part(&self) -> RawDefaults {
        RawDefaults {
            success_cooldown: self.success_cooldown.clone(),
            fail_cooldown: self.fail_cooldown.clone(),
            non_recoverable_downtime: self.non_recoverable_downtime.clone(),
            timeout: self.timeout.clone(),
            stop_grace: self.stop_grace.clone(),
            kill_grace: self.kill_grace.clone(),
            keep_runs_for: self.keep_runs_for.clone(),
            keep_runs_max: self.keep_runs_max,
            keep_output: self.keep_output.clone(),
        }
    }
}

fn check_address(ctx: &Ctx, key: &str, a: &str) -> Result<()> {
    let ok = !a.is_empty()
        && a.split('@').count() == 2
        && !a.starts_with('@')
        && !a.ends_with('@')
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ctx.err(
            key,
            format!("expected an email address like \"admin@example.com\", got {a:?}"),
        ))
    }
}

fn check_smtp_url(ctx: &Ctx, url: &str) -> Result<()> {
    let expected = || {
        ctx.err(
            "email.smtp",
            format!("expected a URL like \"smtp://host:25\", \"smtp://user@host:587\" or \"smtps://host:465\", got {url:?}"),
        )
    };
    let rest = url
        .strip_prefix("smtp://")
        .or_else(|| url.strip_prefix("smtps://"))
        .ok_or_else(expected)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let hostport = match rest.rsplit_once('@') {
        Some((user, hp)) if !user.is_empty() && !user.contains(':') => hp,
        Some((_, _)) => {
            return Err(ctx.err(
                "email.smtp",
                "expected only a user name before '@' (put the password in password_file or password_env, never in the URL)",
            ))
        }
        None => rest,
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (hostport, None),
    };
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(expected());
    }
    if let Some(p) = port {
        if p.parse::<u16>().map(|n| n == 0).unwrap_or(true) {
            return Err(expected());
        }
    }
    Ok(())
}

impl Config {
    /// Parse and validate config text. `file` names the file in messages and anchors
    /// relative paths (its folder).
    pub fn parse(text: &str, file: &Path) -> Result<Config> {
        let ctx = Ctx { file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            Error::Config(format!("{}: {}", file.display(), msg.trim_end()))
        })?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let run_root = match &raw.run_root {
            Some(r) if r.trim().is_empty() => {
                return Err(ctx.err("run_root", "expected a directory path, got an empty string"))
            }
            Some(r) => Some(resolve(r)),
            None => None,
        };

        let defaults = Layer::read(&ctx, "defaults", &raw.defaults.clone().unwrap_or_default())?;

        let mut groups = BTreeMap::new();
        for (name, g) in &raw.groups {
            check_name(name).map_err(|m| ctx.err(&format!("groups.{name}"), m))?;
            let max = u32::try_from(g.max_running)
                .ok()
                .filter(|n| (1..=builtin::MAX_RUNNING_MAX).contains(n))
                .ok_or_else(|| {
                    ctx.err(
                        &format!("groups.{name}.max_running"),
                        format!(
                            "expected a whole number from 1 to {} (one slot file each), got {}",
                            builtin::MAX_RUNNING_MAX,
                            g.max_running
                        ),
                    )
                })?;
            let scope = match g.scope.as_deref() {
                None | Some("host") => Scope::Host,
                Some("fleet") if raw.store.is_some() => Scope::Fleet,
                Some("fleet") => {
                    return Err(ctx.err(
                        &format!("groups.{name}.scope"),
                        "expected \"host\": scope = \"fleet\" needs a [store] section (the fleet's database)",
                    ))
                }
                Some(other) => {
                    return Err(ctx.err(
                        &format!("groups.{name}.scope"),
                        format!("expected \"host\" or \"fleet\", got {other:?}"),
                    ))
                }
            };
            groups.insert(
                name.clone(),
                Group {
                    max_running: max,
                    scope,
                },
            );
        }

        let mut tasks = BTreeMap::new();
        let mut default_kill_grace = Vec::new();
        for (name, t) in &raw.tasks {
            let key = format!("tasks.{name}");
            check_task_name(name).map_err(|m| ctx.err(&key, m))?;
            let program = match (&t.command, &t.argv) {
                (Some(_), Some(_)) => {
                    return Err(ctx.err(
                        &key,
                        "expected either `command` or `argv`, not both",
                    ))
                }
                (None, None) => {
                    return Err(ctx.err(
                        &key,
                        "expected `command = \"...\"` (run by /bin/sh -c) or `argv = [\"prog\", \"arg\", ...]`, found neither",
                    ))
                }
                (Some(c), None) => {
                    if c.trim().is_empty() {
                        return Err(ctx.err(&format!("{key}.command"), "expected a command, got an empty string"));
                    }
                    if c.contains('\0') {
                        return Err(ctx.err(&format!("{key}.command"), "expected no NUL character"));
                    }
                    Program::Shell(c.clone())
                }
                (None, Some(v)) => {
                    if v.is_empty() || v[0].is_empty() {
                        return Err(ctx.err(
                            &format!("{key}.argv"),
                            "expected a non-empty list whose first item names the program",
                        ));
                    }
                    if v.iter().any(|a| a.contains('\0')) {
                        return Err(ctx.err(&format!("{key}.argv"), "expected no NUL character"));
                    }
                    Program::Argv(v.clone())
                }
            };
            let cwd = match &t.cwd {
                Some(c) if c.is_empty() => {
                    return Err(ctx.err(
                        &format!("{key}.cwd"),
                        "expected a directory path, got an empty string",
                    ))
                }
                Some(c) => resolve(c),
                None => dir.clone(),
            };
            let env = t.env.clone().unwrap_or_default();
            for (k, v) in &env {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(ctx.err(
                        &format!("{key}.env"),
                        format!("expected variable names without '=' or NUL, got {k:?}"),
                    ));
                }
                if v.contains('\0') {
                    return Err(ctx.err(&format!("{key}.env.{k}"), "expected a value without NUL"));
                }
                if k.starts_with("RUN_CHAIN_") {
                    return Err(ctx.err(
                        &format!("{key}.env.{k}"),
                        "RUN_CHAIN_* variables are set by run-chain itself; choose another name",
                    ));
                }
            }
            let nice = match t.nice {
                None => None,
                Some(n) if (-20..=19).contains(&n) => Some(n as i32),
                Some(n) => {
                    return Err(ctx.err(
                        &format!("{key}.nice"),
                        format!("expected a niceness increment from -20 to 19, got {n}"),
                    ))
                }
            };
            if let Some(g) = &t.group {
                if !raw.groups.contains_key(g) {
                    return Err(ctx.err(
                        &format!("{key}.group"),
                        format!("expected the name of a [groups.NAME] section, but group {g:?} is not defined"),
                    ));
                }
            }
            let own = Layer::read(&ctx, &key, &t.defaults_part())?;
            if own.kill_grace.or(defaults.kill_grace).is_none() {
                default_kill_grace.push(name.clone());
            }
            let timing = Timing {
                success_cooldown: own
                    .success_cooldown
                    .or(defaults.success_cooldown)
                    .unwrap_or(builtin::SUCCESS_COOLDOWN),
                fail_cooldown: own
                    .fail_cooldown
                    .or(defaults.fail_cooldown)
                    .unwrap_or(builtin::FAIL_COOLDOWN),
                timeout: own.timeout.or(defaults.timeout).unwrap_or(None),
                stop_grace: own
                    .stop_grace
                    .or(defaults.stop_grace)
                    .unwrap_or(builtin::STOP_GRACE),
                kill_grace: own
                    .kill_grace
                    .or(defaults.kill_grace)
                    .unwrap_or(builtin::KILL_GRACE),
            };
            tasks.insert(
                name.clone(),
                Task {
                    name: name.clone(),
                    program,
                    cwd,
                    env,
                    nice,
                    group: t.group.clone(),
                    timing,
                    non_recoverable_downtime: own
                        .non_recoverable_downtime
                        .or(defaults.non_recoverable_downtime)
                        .unwrap_or(builtin::NON_RECOVERABLE_DOWNTIME),
                    keep_runs_for: own
                        .keep_runs_for
                        .or(defaults.keep_runs_for)
                        .unwrap_or(builtin::KEEP_RUNS_FOR),
                    keep_runs_max: own
                        .keep_runs_max
                        .or(defaults.keep_runs_max)
                        .unwrap_or(builtin::KEEP_RUNS_MAX),
                    keep_output: own
                        .keep_output
                        .or(defaults.keep_output)
                        .unwrap_or(builtin::KEEP_OUTPUT),
                },
            );
        }

        let email = match &raw.email {
            None => None,
            Some(e) => Some(Self::email(&ctx, e, &resolve)?),
        };

        let store = match &raw.store {
            None => None,
            Some(s) => Some(store::store(&ctx, s, &resolve, &|v| std::env::var_os(v))?),
        };

        Ok(Config {
            file: file.to_path_buf(),
            run_root,
            tasks,
            groups,
            email,
            store,
            digest: digest(text.as_bytes()),
            default_kill_grace,
        })
    }

    fn email(ctx: &Ctx, e: &RawEmail, resolve: &dyn Fn(&str) -> PathBuf) -> Result<Email> {
        if e.to.is_empty() {
            return Err(ctx.err("email.to", "expected at least one address"));
        }
        for a in &e.to {
            check_address(ctx, "email.to", a)?;
        }
        if let Some(f) = &e.from {
            check_address(ctx, "email.from", f)?;
        }
        if e.smtp.is_some() && e.sendmail.is_some() {
            return Err(ctx.err("email", "expected either `smtp` or `sendmail`, not both"));
        }
        if let Some(u) = &e.smtp {
            check_smtp_url(ctx, u)?;
        }
        if e.password_file.is_some() && e.password_env.is_some() {
            return Err(ctx.err(
                "email",
                "expected either `password_file` or `password_env`, not both",
            ));
        }
        if let Some(v) = &e.password_env {
            if v.is_empty() || v.contains('=') || v.contains('\0') {
                return Err(ctx.err(
                    "email.password_env",
                    format!("expected the name of an environment variable, got {v:?}"),
                ));
            }
        }
        let tls = match e.tls.as_deref() {
            None | Some("opportunistic") => TlsMode::Opportunistic,
            Some("required") => TlsMode::Required,
            Some("none") => TlsMode::None,
            Some(other) => {
                return Err(ctx.err(
                    "email.tls",
                    format!("expected \"opportunistic\", \"required\" or \"none\", got {other:?}"),
                ))
            }
        };
        let max = match e.max_alerts_per_hour {
            None => builtin::MAX_ALERTS_PER_HOUR,
            Some(n) => u32::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                ctx.err(
                    "email.max_alerts_per_hour",
                    format!("expected a whole number of 1 or more, got {n}"),
                )
            })?,
        };
        let path = |key: &str, v: &Option<String>| -> Result<Option<PathBuf>> {
            match v {
                None => Ok(None),
                Some(s) if s.is_empty() => {
                    Err(ctx.err(key, "expected a path, got an empty string"))
                }
                Some(s) => Ok(Some(resolve(s))),
            }
        };
        Ok(Email {
            to: e.to.clone(),
            from: e.from.clone(),
            smtp: e.smtp.clone(),
            tls,
            ca_file: path("email.ca_file", &e.ca_file)?,
            password_file: path("email.password_file", &e.password_file)?,
            password_env: e.password_env.clone(),
            sendmail: path("email.sendmail", &e.sendmail)?,
            max_alerts_per_hour: max,
        })
    }

    /// Read and parse the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "{}: cannot read the config file: {e} (expected a readable TOML file; set it with -c FILE or RUN_CHAIN_CONFIG)",
                path.display()
            ))
        })?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::Config(format!("{}: expected UTF-8 TOML text", path.display())))?;
        Config::parse(&text, path)
    }

    /// The tasks named, in order, or an error naming the first one not defined.
    pub(crate) fn chain_tasks(&self, names: &[String]) -> Result<Vec<Task>> {
        names
            .iter()
            .map(|n| {
                self.tasks.get(n).cloned().ok_or_else(|| {
                    let known: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
                    Error::config_key(
                        &self.file,
                        &format!("tasks.{n}"),
                        format!(
                            "task {n:?} is named on the command line but not defined (defined: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/rc/tasks.toml"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for {text}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 78);
                e.to_string()
            }
        }
    }

    const SPEC_EXAMPLE: &str = r#"
run_root = "var/run"

[defaults]
success_cooldown = "15m"
fail_cooldown = "30m"
non_recoverable_downtime = "6h"
timeout = "1h"
stop_grace = "30s"
kill_grace = "5s"
keep_runs_for = "30d"
keep_runs_max = 100000
keep_output = "64KiB"

[email]
to = ["admin@example.com"]
from = "run-chain@example.com"
smtp = "smtp://127.0.0.1:25"
tls = "opportunistic"
ca_file = "/etc/ssl/local-ca.pem"
password_file = "/etc/run-chain/smtp-password"
max_alerts_per_hour = 10

[tasks.send_mail]
command = "python manage.py send_mail"
cwd = "/srv/example/main"
env = { DJANGO_SETTINGS_MODULE = "example.settings" }
success_cooldown = "15m"
fail_cooldown = "30m"
nice = 5
group = "db"

[groups.db]
max_running = 1
"#;

    #[test]
    fn spec_example_parses_and_resolves() {
        let c = parse(SPEC_EXAMPLE).expect("spec example");
        assert_eq!(c.run_root, Some(PathBuf::from("/etc/rc/var/run")));
        let t = &c.tasks["send_mail"];
        assert_eq!(
            t.program,
            Program::Shell("python manage.py send_mail".into())
        );
        assert_eq!(t.cwd, PathBuf::from("/srv/example/main"));
        assert_eq!(t.timing.timeout, Some(Duration::from_secs(3600)));
        assert_eq!(t.timing.kill_grace, Duration::from_secs(5));
        assert_eq!(t.keep_output, 65536);
        assert_eq!(t.nice, Some(5));
        assert_eq!(c.groups["db"].max_running, 1);
        let e = c.email.expect("email");
        assert_eq!(e.tls, TlsMode::Opportunistic);
        assert_eq!(e.max_alerts_per_hour, 10);
    }

    #[test]
    fn defaults_inherit_and_task_overrides() {
        let c = parse(
            "[defaults]\nsuccess_cooldown = \"1s\"\ntimeout = \"10s\"\n[tasks.a]\nargv = [\"true\"]\n[tasks.b]\ncommand = \"x\"\nsuccess_cooldown = \"2s\"\ntimeout = \"none\"\ncwd = \"sub\"\n",
        )
        .expect("valid");
        assert_eq!(c.tasks["a"].timing.success_cooldown, Duration::from_secs(1));
        assert_eq!(c.tasks["a"].timing.timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.tasks["a"].timing.fail_cooldown, builtin::FAIL_COOLDOWN);
        assert_eq!(c.tasks["a"].cwd, PathBuf::from("/etc/rc"));
        assert_eq!(c.tasks["b"].timing.success_cooldown, Duration::from_secs(2));
        assert_eq!(c.tasks["b"].timing.timeout, None);
        assert_eq!(c.tasks["b"].cwd, PathBuf::from("/etc/rc/sub"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = err("[tasks.a]\ncommand = \"x\"\nsucess_cooldown = \"1s\"\n");
        assert!(
            e.contains("/etc/rc/tasks.toml") && e.contains("sucess_cooldown"),
            "{e}"
        );
        let e = err("[tasks.a]\ncommand = \"x\"\nfail_cooldown = \"soon\"\n");
        assert!(
            e.contains("tasks.a.fail_cooldown") && e.contains("duration"),
            "{e}"
        );
        let e = err("[tasks.a]\ncommand = \"x\"\nargv = [\"x\"]\n");
        assert!(e.contains("tasks.a") && e.contains("not both"), "{e}");
        let e = err("[tasks.a]\ncwd = \"/\"\n");
        assert!(e.contains("tasks.a") && e.contains("neither"), "{e}");
        let e = err("[tasks.status]\ncommand = \"x\"\n");
        assert!(e.contains("tasks.status") && e.contains("reserved"), "{e}");
        let e = err("[tasks.a]\ncommand = \"x\"\ngroup = \"db\"\n");
        assert!(
            e.contains("tasks.a.group") && e.contains("not defined"),
            "{e}"
        );
        let e = err("[defaults]\nkeep_output = \"lots\"\n");
        assert!(
            e.contains("defaults.keep_output") && e.contains("size"),
            "{e}"
        );
        let e = err("[tasks.a]\ncommand = \"x\"\nnice = 40\n");
        assert!(e.contains("tasks.a.nice"), "{e}");
        let e = err("[email]\nto = [\"a@b\"]\nsmtp = \"http://x\"\n");
        assert!(e.contains("email.smtp"), "{e}");
        let e = err("[email]\nto = [\"a@b\"]\nsmtp = \"smtp://u:pw@x\"\n");
        assert!(e.contains("email.smtp") && !e.contains("pw@"), "{e}");
        let e = err("[email]\nto = [\"a@b\"]\npassword_file = \"f\"\npassword_env = \"P\"\n");
        assert!(e.contains("not both"), "{e}");
        let e = err("[tasks.\"a/b\"]\ncommand = \"x\"\n");
        assert!(e.contains("tasks.a/b"), "{e}");
        let e = err("[defaults]\nnon_recoverable_downtime = \"0s\"\n");
        assert!(e.contains("defaults.non_recoverable_downtime"), "{e}");
        let e = err("[groups.g]\nmax_running = 100000\n");
        assert!(e.contains("groups.g.max_running"), "{e}");
        let e = err("[tasks.a]\ncommand = \"x\"\ntimeout = \"0s\"\n");
        assert!(e.contains("tasks.a.timeout"), "{e}");
    }

    #[test]
    fn names() {
        assert!(check_name("send_mail-2.x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name(&"x".repeat(101)).is_err());
        assert!(check_name(&"x".repeat(100)).is_ok());
        assert!(check_name("a\0b").is_err());
        assert!(check_task_name("kick").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2 KB"), Ok(2000));
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("15 minutes please").is_err());
    }

    proptest::proptest! {
        /// Every duration the config can say (to the millisecond, up to ten years) is
        /// written in a form that reads back as the same duration.
        #[test]
        fn every_duration_reads_back_as_written(ms in 0u64..10 * 366 * 86_400_000) {
            let d = Duration::from_millis(ms);
            proptest::prop_assert_eq!(parse_duration(&fmt_duration(d)), Ok(d));
        }
    }

    #[test]
    fn durations_and_sizes_are_written_as_the_config_reads_them() {
        for (d, text) in [
            (Duration::from_secs(15 * 60), "15m"),
            (Duration::from_secs(5400), "1h 30m"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(200), "200ms"),
            (Duration::ZERO, "0s"),
            (builtin::KEEP_RUNS_FOR, "30d"),
            (Duration::from_secs(365 * 86_400), "365d"),
            (Duration::from_secs(31 * 86_400 + 1), "31d 1s"),
            (Duration::from_millis(2_500), "2s 500ms"),
            (Duration::from_millis(90_061_001), "1d 1h 1m 1s 1ms"),
        ] {
            assert_eq!(fmt_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
        for (n, text) in [
            (65536, "64KiB"),
            (1 << 20, "1MiB"),
            (3 << 30, "3GiB"),
            (1536, "1536"),
            (1000, "1000"),
            (0, "0"),
            (1, "1"),
        ] {
            assert_eq!(fmt_size(n), text);
            assert_eq!(parse_size(text), Ok(n));
        }
        for t in [TlsMode::Opportunistic, TlsMode::Required, TlsMode::None] {
            let text = format!("[email]\nto = [\"a@b\"]\ntls = \"{}\"\n", t.as_str());
            assert_eq!(parse(&text).expect("valid").email.map(|e| e.tls), Some(t));
        }
    }

    #[test]
    fn coming_commands_are_reserved_with_a_rename_hint() {
        for name in ["serve", "run-now", "store"] {
            let e = err(&format!("[tasks.{name}]\ncommand = \"x\"\n"));
            assert!(
                e.contains(&format!("tasks.{name}"))
                    && e.contains("reserved")
                    && e.contains("rename the task"),
                "{e}"
            );
        }
        let e = err("[tasks.kick]\ncommand = \"x\"\n");
        assert!(e.contains("rename the task"), "{e}");
    }

    #[test]
    fn undefined_task_on_command_line() {
        let c = parse("[tasks.a]\ncommand = \"x\"\n").expect("valid");
        let e = c
            .chain_tasks(&["a".into(), "b".into()])
            .expect_err("b undefined");
        let m = e.to_string();
        assert!(
            m.contains("tasks.b") && m.contains("not defined") && m.contains("tasks.toml"),
            "{m}"
        );
    }
}
