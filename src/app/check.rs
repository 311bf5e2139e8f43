//! `run-chain check`: validate the config and print it as run-chain reads it, defaults
//! resolved, as a TOML file would say it.

use std::path::Path;
use std::time::Duration;

use crate::cli::Common;
use crate::config::{self, Config, Program};
use crate::error::{exit, Error, Result};
use crate::root::{config_path, run_root, run_root_override};

/// A section of `check`'s report: its header (None: the top level) and its `key = value`
/// rows; a key that starts with `#` is a comment line of its own.
type Section = (Option<String>, Vec<(String, String)>);

pub(crate) fn check(common: &Common) -> Result<u8> {
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
    for w in warnings(&config) {
        eprintln!("run-chain: warning: {w}");
    }
    let _ = std::io::stdout()
        .lock()
        .write_all(check_text(&config, &root, from).as_bytes());
    if let Some(store) = &config.store {
        let report = probe_store(&config.file, store)?;
        let _ = std::io::stdout().lock().write_all(report.as_bytes());
    }
    Ok(exit::OK)
}

/// What `check` warns about without refusing the config: in a fleet, a task whose
/// `kill_grace` does not fit between the fence's TERM (0.6 × lease) and KILL
/// (0.8 × lease) would be killed by the fence before its grace ends.
fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(store) = &config.store {
        let max = store.max_kill_grace();
        // The tasks on the built-in default: one line for them all (the README's [store]
        // alone makes every task exceed the default lease's 2 s).
        let defaulted = |t: &config::Task| config.default_kill_grace.contains(&t.name);
        let on_default = config
            .tasks
            .values()
            .filter(|t| defaulted(t) && t.timing.kill_grace > max)
            .count();
        if on_default > 0 {
            out.push(format!(
                "{}: {on_default} task{} the default kill_grace {}, more than 0.2 × store.lease = {}: when the fence stops {} it gets {} (set kill_grace in [defaults], or lengthen the lease)",
                config.file.display(),
                if on_default == 1 { " uses" } else { "s use" },
                config::fmt_duration(config::builtin::KILL_GRACE),
                config::fmt_duration(max),
                if on_default == 1 { "it" } else { "a task" },
                config::fmt_duration(max),
            ));
        }
        for t in config.tasks.values().filter(|t| !defaulted(t)) {
            if t.timing.kill_grace > max {
                out.push(format!(
                    "{}: tasks.{}.kill_grace = {} exceeds 0.2 × store.lease ({}): an owner that loses the database sends SIGTERM at 0.6 × lease and SIGKILL at 0.8 × lease, so this task gets {} of grace, not {}",
                    config.file.display(),
                    t.name,
                    config::fmt_duration(t.timing.kill_grace),
                    config::fmt_duration(max),
                    config::fmt_duration(max),
                    config::fmt_duration(t.timing.kill_grace),
                ));
            }
        }
    }
    out
}

/// Connect to the fleet's database and say what is there, changing nothing: the server's
/// version, TLS or not, the schema's version. A config the server refuses (password,
/// TLS verification, cleartext/MD5 authentication, a database that is not run-chain's)
/// is an error (78); a database that cannot be reached now is not a config error: a
/// warning, and `check` still succeeds (a launch waits as standby until it can reach it).
fn probe_store(file: &Path, store: &config::FleetConfig) -> Result<String> {
    use crate::store::pg::conn::{Conn, ConnError};
    use crate::store::pg::schema;
    let timeout = store.lease.min(Duration::from_secs(5));
    let refused = |m: String| store.refused(file, &m);
    let conn = match Conn::connect(store, timeout) {
        Ok(c) => c,
        Err(ConnError::Refused(m)) => return Err(refused(m)),
        Err(ConnError::Unreachable(m)) => {
            eprintln!("run-chain: warning: cannot reach the database now: {m}");
            return Ok(format!(
                "# store: cannot reach {} now (a launch waits as standby until it can)\n",
                store.display_url
            ));
        }
    };
    let server = conn
        .run(
            timeout,
            conn.client()
                .query_typed("SELECT current_setting('server_version')", &[]),
        )
        .ok()
        .and_then(|rows| rows.first().and_then(|r| r.try_get::<_, String>(0).ok()))
        .unwrap_or_else(|| "unknown version".into());
    let tls = if conn.is_tls() {
        "TLS, certificate and host name verified"
    } else {
        "no TLS, SCRAM-SHA-256 only"
    };
    let schema = match schema::version(&conn) {
        Ok(None) => "not created yet (created at the first launch)".to_string(),
        Ok(Some(v)) if v == schema::VERSION => format!("version {v} (current)"),
        Ok(Some(v)) if v < schema::VERSION => {
            format!("version {v} (migrated to {} at the next launch)", schema::VERSION)
        }
        Ok(Some(v)) => {
            return Err(refused(format!(
                "{}: the run_chain schema is at version {v}, newer than this run-chain ({}) knows: upgrade run-chain on this host",
                store.display_url,
                schema::VERSION
            )))
        }
        Err(ConnError::Refused(m)) => return Err(refused(m)),
        Err(ConnError::Unreachable(m)) => {
            eprintln!("run-chain: warning: cannot read the database now: {m}");
            "unknown (the database stopped answering)".to_string()
        }
    };
    Ok(format!(
        "# store: connected to {} (PostgreSQL {server}, {tls})\n# store: schema {schema}\n",
        store.display_url
    ))
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
        let mut rows = vec![row("max_running", g.max_running.to_string())];
        if config.store.is_some() {
            let note = match g.scope {
                config::Scope::Host => "  # kernel locks: chains of this host",
                config::Scope::Fleet => {
                    "  # slot rows in the fleet store (not enforced yet: a later stage)"
                }
            };
            rows.push(row(
                "scope",
                format!("{}{note}", toml_str(g.scope.as_str())),
            ));
        }
        sections.push((Some(format!("groups.{}", toml_key(name))), rows));
    }
    if let Some(st) = &config.store {
        let mut rows = vec![row(
            "url",
            format!("{}  # shown without any secret", toml_str(&st.url.to_url())),
        )];
        if let Some(f) = &st.password_file {
            rows.push(row("password_file", path(f)));
        }
        if let Some(v) = &st.password_env {
            rows.push(row(
                "password_env",
                format!("{}  # removed from every task's environment", toml_str(v)),
            ));
        }
        let tls_note = match (st.tls, st.tls_explicit) {
            (_, true) => "",
            (config::FleetTls::None, false) => {
                "  # the default on loopback or a Unix socket (SCRAM-SHA-256 only)"
            }
            (_, false) => "  # the default: certificate chain and host name verified",
        };
        rows.push(row(
            "tls",
            format!("{}{tls_note}", toml_str(st.tls.as_str())),
        ));
        if let Some(f) = &st.ca_file {
            rows.push(row("ca_file", path(f)));
        }
        rows.push(row("lease", dur(st.lease)));
        rows.push(row(
            &format!(
                "# renewed every {} (lease/5); an owner that cannot renew stops its task: SIGTERM at {}, SIGKILL at {} after its last renewal",
                config::fmt_duration(st.renew_period()),
                config::fmt_duration(st.fence_term()),
                config::fmt_duration(st.fence_kill()),
            ),
            String::new(),
        ));
        rows.push(row("host", toml_str(&st.host)));
        sections.push((Some("store".into()), rows));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
            "keep_runs_for                 = \"30d\"",
            "timeout                       = \"1h 30m\"",
            "timeout                       = \"none\"",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    /// With `[store]`: the section reads back as the same store (the URL without secret,
    /// TLS's default written out), the groups' scope too; a kill_grace over 0.2 × lease
    /// is warned about.
    #[test]
    fn store_section_reads_back() {
        let file = Path::new("/etc/rc/tasks.toml");
        for store in [
            "url = \"postgresql://run%20chain@db.example.com:5433/rc\"\nca_file = \"ca.pem\"\nlease = \"12s\"\nhost = \"web-3\"\npassword_env = \"PATH\"",
            "url = \"postgresql://runchain@/rc?host=/run/postgresql\"",
            "url = \"postgresql://runchain@[::1]/rc\"\ntls = \"opportunistic\"",
        ] {
            let text = format!("{CONFIG}scope = \"fleet\"\n[store]\n{store}\n");
            let c = Config::parse(&text, file).expect("valid");
            let out = check_text(&c, Path::new("/var/run/rc"), "from the config");
            let back = Config::parse(&out, file).unwrap_or_else(|e| panic!("{e}:\n{out}"));
            let (mut a, b) = (c.store.clone().unwrap(), back.store.clone().unwrap());
            a.tls_explicit = true;
            assert_eq!(a, b, "{out}");
            assert_eq!(back.groups, c.groups, "{out}");
            // Both tasks on the built-in kill_grace: one line for the two.
            let w = warnings(&c);
            assert_eq!(w.len(), 1, "{w:?}");
            assert!(w[0].contains("2 tasks use the default kill_grace 5s, more than 0.2 × store.lease"), "{w:?}");
        }
        // Set in [defaults]: a line per task, naming it.
        let text = format!("{CONFIG}[store]\nurl = \"postgresql://u@h/d\"\n")
            .replace("[defaults]\n", "[defaults]\nkill_grace = \"3s\"\n");
        let w = warnings(&Config::parse(&text, file).expect("valid"));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("tasks.a.kill_grace = 3s exceeds 0.2 × store.lease"),
            "{w:?}"
        );
        let c = Config::parse(CONFIG, file).expect("valid");
        assert!(warnings(&c).is_empty());
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
}
