//! RUN_ROOT and the config file: where they are (flag, then environment, then file,
//! then default), whether a RUN_ROOT may be used, and whether a reload would move a
//! running chain to another one. Below both `app` (which resolves them once per command)
//! and the driver (which checks a reload against them).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::cli::Common;
use crate::config::Config;
use crate::error::{Error, Result};

/// The config file: `-c`, then `RUN_CHAIN_CONFIG`, then `./tasks.toml`.
pub(crate) fn config_path(common: &Common) -> PathBuf {
    common
        .config
        .clone()
        .or_else(|| {
            std::env::var_os("RUN_CHAIN_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("tasks.toml"))
}

/// RUN_ROOT: `--run-root`, then `RUN_ROOT`, then the config's `run_root`, then
/// `var/run` beside the config file. The config is loaded only when needed.
pub(crate) fn run_root(common: &Common, config: Option<&Config>) -> Result<PathBuf> {
    if let Some(r) = run_root_override(common) {
        return Ok(r);
    }
    let loaded;
    let config = match config {
        Some(c) => c,
        None => match Config::load(&config_path(common)) {
            Ok(c) => {
                loaded = c;
                &loaded
            }
            // A command that only looks (status, stop, kick, ...) must still work when
            // a bad config was just deployed: take run_root from the file as it stands.
            Err(e) => return lenient_run_root(&config_path(common), e),
        },
    };
    Ok(default_run_root(&config.file, config.run_root.clone()))
}

/// `--run-root`, else `RUN_ROOT`: a RUN_ROOT that no config decides.
pub(crate) fn run_root_override(common: &Common) -> Option<PathBuf> {
    common.run_root.clone().or_else(|| {
        std::env::var_os("RUN_ROOT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// The RUN_ROOT `config` names (its `run_root`, else `var/run` beside the file).
pub(crate) fn config_run_root(config: &Config) -> PathBuf {
    default_run_root(&config.file, config.run_root.clone())
}

fn default_run_root(file: &Path, from_file: Option<PathBuf>) -> PathBuf {
    from_file.unwrap_or_else(|| {
        file.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("var/run")
    })
}

/// RUN_ROOT from a config file that does not validate: its `run_root` key if the TOML
/// parses at all (else its top-level `run_root` line), else the default beside it. Errors
/// if the file cannot be read, or has a run_root that cannot be read as a path.
fn lenient_run_root(file: &Path, err: Error) -> Result<PathBuf> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Err(Error::Config(format!(
            "{err}; or name RUN_ROOT itself with --run-root DIR or RUN_ROOT"
        )));
    };
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let unreadable = || {
        Error::Config(format!(
            "{err}; its run_root cannot be read either: name RUN_ROOT with --run-root DIR or RUN_ROOT"
        ))
    };
    // A run_root that is there but not a path is an error, never a silent fall back to the
    // default RUN_ROOT (where no chain would be found).
    let as_path = |v: Option<&toml::Value>| -> Result<Option<String>> {
        match v {
            None => Ok(None),
            Some(v) => match v.as_str() {
                Some(r) if !r.is_empty() => Ok(Some(r.to_string())),
                _ => Err(unreadable()),
            },
        }
    };
    let from_file = match text.parse::<toml::Table>() {
        Ok(t) => as_path(t.get("run_root"))?,
        // Not TOML at all (a syntax error): the top-level `run_root = "..."` line, if the
        // file has one, read on its own.
        Err(_) => match top_level_line(&text, "run_root") {
            None => None,
            Some(line) => match line.parse::<toml::Table>() {
                Ok(t) => as_path(t.get("run_root"))?,
                Err(_) => return Err(unreadable()),
            },
        },
    }
    .map(|r| {
        let p = Path::new(&r);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    });
    let root = default_run_root(file, from_file);
    eprintln!(
        "run-chain: warning: the config has errors ({err}); using RUN_ROOT {} anyway",
        root.display()
    );
    Ok(root)
}

/// RUN_ROOT for a command that only looks or signals (status, history, log, metrics,
/// exporter, stop, kick): refused on the same terms as for a chain, when it exists, since
/// what such a command reads there (the store, the pidfiles) decides what it reports and
/// whom it signals. One that does not exist yet is left to the command (no chain there).
pub(crate) fn looked_run_root(common: &Common) -> Result<PathBuf> {
    let root = run_root(common, None)?;
    match std::fs::symlink_metadata(&root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(root),
        _ => check_run_root(&root).map(|()| root),
    }
}

/// The line that sets `key` at the top level of a TOML text (before any `[table]`), if any.
fn top_level_line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .find(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
}

/// Create RUN_ROOT if needed (mode 0700) and refuse one that others could tamper with.
pub(crate) fn prepare_run_root(dir: &Path) -> Result<()> {
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::Config(format!(
            "{}: RUN_ROOT is not a directory",
            dir.display()
        )));
    }
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        return Err(Error::Config(format!(
            "{}: cannot create RUN_ROOT: {e}",
            dir.display()
        )));
    }
    check_run_root(dir)
}

/// Refuse a RUN_ROOT that is not a directory, is owned by another user, or is
/// writable by others without the sticky bit.
pub(crate) fn check_run_root(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::Config(format!("{}: cannot use as RUN_ROOT: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(Error::Config(format!(
            "{}: RUN_ROOT is not a directory",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::Config(format!(
            "{}: RUN_ROOT is owned by uid {}, not by this user (uid {me}); refusing to use it",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(Error::Config(format!(
            "{}: RUN_ROOT is writable by others (mode {:o}) without the sticky bit; refusing to use it (chmod o-w)",
            dir.display(),
            mode & 0o7777
        )));
    }
    Ok(())
}

/// An error if reloading `new` would move chain `chain`, which runs in `current`, to another
/// RUN_ROOT (only when the config decides it: not under `--run-root` or `RUN_ROOT`). The
/// folders are compared as the file system sees them, so another spelling of the same one
/// (relative, through a symlink) is no move. A chain cannot move while it runs: its lock,
/// state and store stay where they are, and with the edit applied `status`, `stop` and
/// `kick` (which follow the file) would not find it, and a launch would start a second
/// instance. Such a reload is refused whole, and the error says how to move the chain.
pub(crate) fn moved_run_root(
    chain: &str,
    root_from_config: bool,
    current: &Path,
    new: &Config,
) -> Option<Error> {
    if !root_from_config {
        return None;
    }
    let to = config_run_root(new);
    let same = match (std::fs::canonicalize(current), std::fs::canonicalize(&to)) {
        (Ok(a), Ok(b)) => a == b,
        _ => current == to,
    };
    (!same).then(|| {
        Error::Config(format!(
            "{}: run_root changed from {} to {}; a running chain cannot move, so the config is not reloaded. To move it, stop it where it runs (`run-chain --run-root {} stop {chain}`), then launch it with the new run_root",
            new.file.display(),
            current.display(),
            to.display(),
            current.display(),
        ))
    })
}
