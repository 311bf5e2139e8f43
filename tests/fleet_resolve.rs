//! The fleet database's host name is resolved within the connect's timeout: a resolver
//! that does not answer (here getaddrinfo made to hang for one name by an LD_PRELOAD shim:
//! a slow DNS server is hard to have on a test machine) costs the timeout, not the
//! resolver's own minutes, and the message names the host.

mod common;

use std::time::{Duration, Instant};

use common::{build_preload_shim, TestEnv};

/// getaddrinfo for `slow-db.invalid` waits 20 s, then fails; other names go to libc's.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    if (node && strcmp(node, "slow-db.invalid") == 0) {
        sleep(20);
        return EAI_AGAIN;
    }
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
        dlsym(RTLD_NEXT, "getaddrinfo");
    return real(node, service, hints, res);
}
"#;

#[test]
fn a_resolver_that_does_not_answer_costs_the_connect_timeout_and_is_named() {
    let env = TestEnv::new("");
    let so = build_preload_shim(&env, "slowdns", SHIM);
    let pw = env.path("pw");
    std::fs::write(&pw, "secret\n").expect("password file");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    env.write_config(&format!(
        r#"
[store]
url = "postgresql://runchain@slow-db.invalid:5432/runchain"
password_file = "{}"
lease = "2s"
host = "h1"

[defaults]
kill_grace = "200ms"

[tasks.a]
command = "true"
"#,
        pw.display()
    ));
    // `check` connects within min(lease, 5 s) = 2 s; an unreachable database is a warning.
    let mut cmd = env.sub_command(&["check"]);
    cmd.env("LD_PRELOAD", &so);
    let started = Instant::now();
    let done = env.finish_command(cmd);
    let took = started.elapsed();
    eprintln!("check took {took:?}; stderr:\n{}", done.stderr);
    done.assert_code(0);
    assert!(
        took < Duration::from_secs(10),
        "check took {took:?} (the resolver hangs 20 s)"
    );
    assert!(
        done.stderr
            .contains("cannot resolve slow-db.invalid: no answer from the resolver within 2s"),
        "{}",
        done.stderr
    );
}
