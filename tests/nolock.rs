//! A lock that cannot be taken for an unexpected reason (issue 7 point 13): run-chain
//! refuses to start rather than run unlocked. The file system's answer is injected with a
//! tiny LD_PRELOAD shim (built here with the system C compiler) whose `flock` fails with
//! ENOLCK, as on an NFS mount without lockd or a FUSE file system without locks.

mod common;

use common::*;

const SHIM: &str = r#"
#include <errno.h>
int flock(int fd, int op) { (void)fd; (void)op; errno = ENOLCK; return -1; }
"#;

#[test]
fn a_lock_refused_with_enolck_stops_the_launch_with_a_clear_error() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "1h"
[tasks.a]
command = 'echo ran >> "$T/out"'
"#,
    );
    let so = build_preload_shim(&env, "nolock", SHIM);
    for extra in [&[][..], &["--once"][..], &["--no-kill-concurrent"][..]] {
        let mut cmd = env.run_command(extra);
        cmd.arg("a").env("LD_PRELOAD", &so);
        let out = env.finish_command(cmd);
        out.assert_code(78);
        assert!(
            out.stderr.contains("without its lock") && out.stderr.contains("a.pid"),
            "the error names the pidfile and says why: {}",
            out.stderr
        );
        assert!(
            !env.path("out").exists(),
            "no task ran without the lock ({extra:?})"
        );
    }
    // Without the shim, the same launch runs.
    env.run(&["--once", "a"]).assert_code(0);
    assert_eq!(env.lines("out"), ["ran"]);
}
