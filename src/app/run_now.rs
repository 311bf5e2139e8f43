//! `run-now CHAIN TASK`: who asks (the user and the terminal), the request through
//! [`crate::control::run_now`], and what is printed: the run id reserved on stdout (for
//! scripts: `id=$(run-chain run-now c t)`), what happens next on stderr.

use crate::cli::Common;
use crate::error::{exit, Result};

pub(super) fn run_now(common: &Common, chain: &str, task: &str) -> Result<u8> {
    let by = who_asks();
    let a = crate::control::run_now(common, chain, task, &by)?;
    say!("{}", a.run_id);
    eprintln!(
        "run-chain: chain {chain} runs {task} as run {} {}",
        a.run_id,
        if a.at_once {
            "now"
        } else {
            "right after the running task (queued)"
        }
    );
    Ok(exit::OK)
}

/// "alice on pts/3": the user (by the real uid) and the controlling terminal of stdin,
/// stdout or stderr; "alice (no tty)" without one. (`kick` and `stop` say so too.)
pub(super) fn who_asks() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    let tty = [0, 1, 2].into_iter().find_map(|fd| {
        // SAFETY: ttyname on a descriptor number; its result is copied at once.
        let p = unsafe { libc::ttyname(fd) };
        if p.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated string from ttyname.
        let s = unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned();
        Some(s.strip_prefix("/dev/").map(str::to_string).unwrap_or(s))
    });
    match tty {
        Some(t) => format!("{user} on {t}"),
        None => format!("{user} (no tty)"),
    }
}
