//! The `sendmail` transport, against a stand-in sendmail (a shell script that keeps what
//! it is given): the arguments are `-i -f FROM -- TO...`, the mail comes whole on stdin
//! with its headers, an exit 75 is retried, and the sendmail process is the mailer's own
//! (never taken for a run's leftover). The stand-in writes each file under a dot name and
//! renames it into place, so a test never reads a mail that is still being written.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

fn fake_sendmail(env: &TestEnv, fail_first: u32) -> std::path::PathBuf {
    let path = env.path("sendmail");
    fs::write(
        &path,
        format!(
            r#"#!/bin/sh
d="{dir}"
n=$(ls "$d" 2>/dev/null | grep -c '^try-' )
touch "$d/try-$n"
if [ "$n" -lt {fail_first} ]; then echo "try later" >&2; exit 75; fi
echo "$@" > "$d/.args-$n" && mv "$d/.args-$n" "$d/args-$n"
cat > "$d/.mail-$n" && mv "$d/.mail-$n" "$d/mail-$n"
"#,
            dir = env.path("sent").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(env.path("sent")).unwrap();
    path
}

fn sent_mails(env: &TestEnv) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(env.path("sent"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("mail-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|n| fs::read_to_string(env.path(&format!("sent/{n}"))).unwrap_or_default())
        .collect()
}

#[test]
fn alerts_go_through_sendmail_with_the_envelope_in_argv() {
    let env = TestEnv::new("");
    let sendmail = fake_sendmail(&env, 0);
    env.write_config(&format!(
        r#"
[defaults]
fail_cooldown = "1h"
[email]
to = ["admin@example.com", "ops@example.com"]
from = "rc@example.com"
sendmail = "{}"
[tasks.bad]
command = 'echo "it broke" >&2; exit 4'
"#,
        sendmail.display()
    ));
    let mut runner = env.spawn(&["bad"]);
    wait_until("sendmail got the first-failure alert", || {
        !sent_mails(&env).is_empty()
    });
    let mail = &sent_mails(&env)[0];
    assert!(mail.contains("X-Run-Chain-Alert: first-failure"), "{mail}");
    assert!(mail.contains("X-Run-Chain-Task: bad"), "{mail}");
    assert!(mail.contains("it broke"), "{mail}");
    let args = fs::read_to_string(env.path("sent/args-0")).unwrap();
    assert_eq!(
        args.trim(),
        "-i -f rc@example.com -- admin@example.com ops@example.com"
    );
    runner.wait_for("the outbox is empty", || {
        fs::read_dir(env.run_root.join("outbox"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                    .count()
                    == 0
            })
            .unwrap_or(true)
    });
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}

#[test]
fn a_sendmail_exit_75_is_retried() {
    let env = TestEnv::new("");
    let sendmail = fake_sendmail(&env, 1);
    env.write_config(&format!(
        r#"
[defaults]
fail_cooldown = "1h"
[email]
to = ["admin@example.com"]
sendmail = "{}"
[tasks.bad]
command = 'exit 1'
"#,
        sendmail.display()
    ));
    let mut runner = env.spawn(&["bad"]);
    wait_until("the alert went through on the second try", || {
        sent_mails(&env).len() == 1
    });
    assert!(env.path("sent/try-0").exists() && env.path("sent/try-1").exists());
    let err = fs::read_to_string(&runner.stderr).unwrap();
    assert!(err.contains("not delivered yet"), "{err}");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
}
