//! Email alerts end to end, against a real SMTP server on 127.0.0.1 that is not ours: Python's
//! aiosmtpd, driven by `tests/smtp_peer.py` (it prints its port, logs every event as a JSON
//! line, and can refuse, delay, blackhole, require STARTTLS and AUTH).
//!
//! What is checked: the reference example with real time (first-failure, then downtime at each
//! window); the server down for a while and back (every queued mail arrives once, in order);
//! the outbox surviving a restart; STARTTLS + AUTH; a blackholed server that never stalls the
//! chain nor its hand-over; 5xx (dropped to outbox/failed/) and 4xx (retried); task output that
//! tries to forge a header; and the SMTP password never leaking anywhere.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

const PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_peer.py");

/// lettre's SMTP timeout in run-chain's mailer: how long a connection to a blackholed server
/// hangs. What must not wait for the mailer has to happen well within it, counted from the
/// moment the hanging connection was made (not from when the test looks, so that a loaded
/// machine eats into the margin as little as possible).
const SMTP_TIMEOUT: f64 = 30.0;

/// "Well within" the SMTP timeout: a hand-over or a stop that waited for the mailer comes
/// later than this, one that did not comes seconds after the connection at most.
const WELL_WITHIN: f64 = SMTP_TIMEOUT - 5.0;

/// A `tests/smtp_peer.py` server. Dropping it SIGKILLs and reaps it.
struct Peer {
    child: Child,
    port: u16,
    log: PathBuf,
    stderr: PathBuf,
}

impl Peer {
    /// Starts the peer on 127.0.0.1:`port` (0: any free port) with `extra` options; returns once
    /// it listens. Its log is `DIR/NAME.log`, its mails `DIR/NAME.mails/N.eml`.
    fn start(env: &TestEnv, name: &str, port: u16, extra: &[&str]) -> Peer {
        let log = env.path(&format!("{name}.log"));
        let stderr = env.path(&format!("{name}.stderr"));
        let mut cmd = env.command_for("python3");
        cmd.arg(PEER_SCRIPT)
            .arg("--port")
            .arg(port.to_string())
            .arg("--log")
            .arg(&log)
            .arg("--maildir")
            .arg(env.path(&format!("{name}.mails")))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap());
        let mut child = cmd.spawn().expect("spawn python3 tests/smtp_peer.py");
        let stdout = child.stdout.take().unwrap();
        let mut peer = Peer {
            child,
            port: 0,
            log,
            stderr,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).unwrap_or_default();
        peer.port = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "smtp_peer.py {extra:?} did not print its port (got {line:?}); stderr:\n{}",
                fs::read_to_string(&peer.stderr).unwrap_or_default()
            )
        });
        if port != 0 {
            assert_eq!(peer.port, port);
        }
        peer
    }

    /// Every event logged so far (complete lines only).
    fn events(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        complete
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad peer log line {l:?}: {e}"))
            })
            .collect()
    }

    fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// The accepted mails, in the order they arrived.
    fn messages(&self) -> Vec<Value> {
        self.events_of("message")
    }

    /// Waits until at least `n` mails arrived (failing at once if `runner` exits).
    fn wait_messages(&self, runner: &mut Runner, n: usize) -> Vec<Value> {
        let mut msgs = Vec::new();
        runner.wait_for(&format!("the SMTP server received {n} mails"), || {
            msgs = self.messages();
            msgs.len() >= n
        });
        msgs
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 where nothing listens (connections are refused) until `release`: a
/// socket bound to it without SO_REUSEADDR and never listening, so that no other bind (another
/// test's server on "any free port") can take it meanwhile.
struct ReservedPort {
    fd: i32,
    port: u16,
}

impl ReservedPort {
    fn new() -> ReservedPort {
        // SAFETY: plain socket calls on a descriptor we own; closed in `release`/drop.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            addr.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            let rc = libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ReservedPort {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }

    /// Frees the port for a server that binds it right now.
    fn release(&mut self) -> u16 {
        if self.fd >= 0 {
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
        self.port
    }
}

impl Drop for ReservedPort {
    fn drop(&mut self) {
        self.release();
    }
}

/// The `[email]` section for an SMTP server on 127.0.0.1:`port`, plus `extra` keys.
fn email_section(url: &str, extra: &str) -> String {
    format!(
        r#"
[email]
to = ["admin@example.com"]
from = "run-chain@example.com"
smtp = "{url}"
{extra}
"#
    )
}

fn smtp_url(port: u16) -> String {
    format!("smtp://127.0.0.1:{port}")
}

/// The queued alerts (`*.eml`, not temp files) in `dir`, sorted by name (the order queued).
fn emls(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy();
                    name.ends_with(".eml") && !name.starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn outbox(env: &TestEnv) -> Vec<PathBuf> {
    emls(&env.run_root.join("outbox"))
}

fn failed(env: &TestEnv) -> Vec<PathBuf> {
    emls(&env.run_root.join("outbox").join("failed"))
}

/// The value of header `name` in the head of a stored mail.
fn header_of(path: &Path, name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(&fs::read(path).ok()?).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

fn message_id_of(path: &Path) -> String {
    header_of(path, "Message-ID").unwrap_or_else(|| panic!("no Message-ID in {}", path.display()))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

fn kinds(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| str_of(m, "alert").to_owned()).collect()
}

fn ids(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| str_of(m, "message_id").to_owned())
        .collect()
}

fn assert_distinct(ids: &[String]) {
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "duplicate Message-IDs: {ids:?}");
}

/// The value of header `name` of a received mail (as the server parsed it).
fn header<'a>(msg: &'a Value, name: &str) -> Vec<&'a str> {
    msg["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

fn the_header<'a>(msg: &'a Value, name: &str) -> &'a str {
    let v = header(msg, name);
    assert_eq!(v.len(), 1, "header {name} once in {msg:#}");
    v[0]
}

/// Lines of run-chain's log saying that a delivery attempt of an alert of `kind` failed
/// temporarily.
fn not_delivered(stderr: &Path, kind: &str) -> usize {
    fs::read_to_string(stderr)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("not delivered yet") && l.contains(&format!("-{kind}-")))
        .count()
}

/// A private CA and a certificate for IP 127.0.0.1 signed by it, made with openssl in DIR:
/// (ca.pem, server.pem, server.key).
fn make_certs(env: &TestEnv) -> (PathBuf, PathBuf, PathBuf) {
    let dir = env.path("tls");
    fs::create_dir(&dir).unwrap();
    let p = |n: &str| dir.join(n);
    fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=run-chain test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ][..],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect(),
        [
            &["req", "-new"][..],
            &ec[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ][..],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect(),
        [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------

/// The reference example, in real time: a task that divides by zero, `fail_cooldown` 1s,
/// `non_recoverable_downtime` 3s: one first-failure mail, then one downtime mail per window
/// (3s, 6s, 9s), and nothing else although the task fails every second.
#[test]
fn reference_example_first_failure_then_a_downtime_mail_per_window() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "smtp", 0, &[]);
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1s"
non_recoverable_downtime = "3s"

[tasks.divide]
command = "python3 -c 'print(1/0)'"
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
    let mut runner = env.spawn(&["divide"]);
    peer.wait_messages(&mut runner, 4);
    env.assert_running(&mut runner, "divide");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    let msgs = peer.messages();
    let k = kinds(&msgs);
    assert!(k.len() >= 4, "{k:?}");
    assert_eq!(k[0], "first-failure", "the mails received: {k:?}");
    assert!(
        k[1..].iter().all(|k| k == "downtime"),
        "expected first-failure then only downtime mails, got {k:?}"
    );
    // One downtime mail per window of 3s, not one per failure (one a second). These are the
    // times the server received them: each after its own delivery delay, which a loaded
    // machine may stretch (the first mail also opens the first connection), hence the slack.
    let times: Vec<f64> = msgs.iter().map(|m| m["t"].as_f64().unwrap()).collect();
    for (i, w) in times.windows(2).enumerate() {
        assert!(
            w[1] - w[0] >= 2.0,
            "mails {i} and {} ({:?}) only {:.2}s apart; all times: {times:?}",
            i + 1,
            &k[i..=i + 1],
            w[1] - w[0]
        );
    }
    let runs = env.history("divide", &["--limit", "100"]);
    assert!(
        runs.len() > msgs.len(),
        "the task failed about every second ({} runs) while {} mails were sent",
        runs.len(),
        msgs.len()
    );
    assert_distinct(&ids(&msgs));

    for m in &msgs {
        assert_eq!(str_of(m, "mail_from"), "run-chain@example.com");
        assert_eq!(m["rcpt_tos"], serde_json::json!(["admin@example.com"]));
        assert_eq!(the_header(m, "X-Run-Chain-Task"), "divide");
        assert_eq!(the_header(m, "X-Run-Chain-Chain"), "divide");
        let kind = str_of(m, "alert");
        let subject = the_header(m, "Subject");
        let plainly = match kind {
            "first-failure" => "divide failed (exit 1: ZeroDivisionError: division by zero)",
            "downtime" => "divide failing for ",
            other => panic!("an alert of kind {other}"),
        };
        assert!(
            subject.starts_with("[run-chain] ") && subject.contains(plainly),
            "subject {subject:?} names host, task and kind ({kind}) plainly"
        );
        let id = the_header(m, "Message-ID");
        assert!(
            id.starts_with('<') && id.ends_with('>') && id.contains('@'),
            "{id}"
        );
    }
    let first = &msgs[0];
    let body = str_of(first, "body");
    for want in [
        "print(1/0)",
        "ZeroDivisionError: division by zero",
        "Failures:",
        "Streak start:",
        "Next attempt:",
        "Duration:",
    ] {
        assert!(
            body.contains(want),
            "first-failure body lacks {want:?}:\n{body}"
        );
    }
    let downtime = str_of(&msgs[1], "body");
    assert!(downtime.contains("print(1/0)"), "{downtime}");
    assert!(downtime.contains("Streak start:"), "{downtime}");
}

/// The server is down when the first alerts are decided (connections refused), and back a
/// while later: every queued mail arrives exactly once, in the order decided, with distinct
/// Message-IDs (those of the queued files), and the outbox ends empty.
///
/// The task fails (error A), fails 6s later with another error (B), then succeeds: alerts
/// first-failure, new-failure, recovered. The server comes back after the new-failure's first
/// attempt failed, i.e. while both earlier alerts wait for their retry.
#[test]
fn server_down_and_back_every_queued_mail_arrives_once_in_order() {
    let mut reserved = ReservedPort::new();
    let port = reserved.port;
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "6s"

[tasks.flaky]
command = '''
n=$(( $(cat "$T/count" 2>/dev/null || echo 0) + 1 )); echo $n > "$T/count"
case $n in
1) echo "error: the disk is full" >&2; exit 1;;
2) echo "error: permission denied" >&2; exit 2;;
esac
echo fine
'''
{}"#,
        email_section(&smtp_url(port), "")
    ));
    let mut runner = env.spawn(&["flaky"]);
    let stderr = runner.stderr.clone();
    // Delivery keeps the order: the new-failure alert waits behind the first-failure one. The
    // first-failure alert is tried (and logged as not delivered) while the server is down: it
    // stays down until this wait is over, so waiting for the log line loses nothing.
    runner.wait_for(
        "the new-failure alert is queued and the first-failure one was tried (server down)",
        || {
            outbox(&env)
                .iter()
                .any(|p| p.to_string_lossy().contains("new-failure"))
                && not_delivered(&stderr, "first-failure") > 0
        },
    );
    let queued: Vec<String> = outbox(&env).iter().map(|p| message_id_of(p)).collect();
    assert!(
        queued.len() >= 2,
        "first-failure and new-failure wait in the outbox: {:?}",
        outbox(&env)
    );

    let peer = Peer::start(&env, "smtp", reserved.release(), &[]);
    peer.wait_messages(&mut runner, 3);
    runner.wait_for("the outbox is empty", || outbox(&env).is_empty());
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    let msgs = peer.messages();
    let got = ids(&msgs);
    assert_distinct(&got);
    for id in &queued {
        assert!(got.contains(id), "queued alert {id} never arrived: {got:?}");
    }
    assert_eq!(
        kinds(&msgs),
        ["first-failure", "new-failure", "recovered"],
        "the mails did not arrive once each in the order decided (arrival times {:?})",
        msgs.iter()
            .map(|m| m["t"].as_f64().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(failed(&env).is_empty(), "{:?}", failed(&env));
    assert!(
        str_of(&msgs[0], "body").contains("error: the disk is full"),
        "{}",
        str_of(&msgs[0], "body")
    );
    assert!(str_of(&msgs[1], "body").contains("error: permission denied"));
}

/// Alerts queued while the server is down survive a stop: the next instance delivers them,
/// each once, with the Message-IDs of the files the old instance left in the outbox. The
/// relaunch does not restart the streak (no second first-failure).
#[test]
fn queued_alerts_survive_a_restart_and_keep_their_message_ids() {
    let mut reserved = ReservedPort::new();
    let port = reserved.port;
    let env = TestEnv::new(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
non_recoverable_downtime = "2s"

[tasks.down]
command = 'echo "error: cannot reach the database" >&2; exit 1'
{}"#,
        email_section(&smtp_url(port), "")
    ));
    let mut first = env.spawn(&["down"]);
    let stderr = first.stderr.clone();
    first.wait_for(
        "first-failure and downtime are queued, and tried (in order: the first-failure first, again when the downtime is queued)",
        || outbox(&env).len() >= 2 && not_delivered(&stderr, "first-failure") >= 2,
    );
    first.signal(libc::SIGTERM);
    first.assert_exit(0);
    let left: Vec<(PathBuf, String)> = outbox(&env)
        .into_iter()
        .map(|p| {
            let id = message_id_of(&p);
            (p, id)
        })
        .collect();
    assert!(left.len() >= 2, "{left:?}");

    let peer = Peer::start(&env, "smtp", reserved.release(), &[]);
    let mut second = env.spawn(&["down"]);
    second.wait_for("the alerts left by the stopped instance arrived", || {
        let got = ids(&peer.messages());
        left.iter().all(|(_, id)| got.contains(id))
    });
    second.wait_for("the old alerts left the outbox", || {
        left.iter().all(|(p, _)| !p.exists())
    });
    second.signal(libc::SIGTERM);
    second.assert_exit(0);

    let msgs = peer.messages();
    let got = ids(&msgs);
    for (p, id) in &left {
        assert_eq!(
            got.iter().filter(|g| *g == id).count(),
            1,
            "{} ({id}) arrived once: {got:?}",
            p.display()
        );
    }
    assert_distinct(&got);
    let k = kinds(&msgs);
    assert_eq!(
        k.iter().filter(|k| *k == "first-failure").count(),
        1,
        "the relaunch restarted the streak: {k:?}"
    );
    assert!(k.iter().any(|k| k == "downtime"), "{k:?}");
}

/// STARTTLS and AUTH against a server that requires both (its certificate is for IP 127.0.0.1,
/// signed by a private CA given as `ca_file`): `mail-test` delivers, over TLS, as alice. With a
/// wrong password nothing is accepted and `mail-test` fails.
#[test]
fn starttls_and_auth_against_a_server_that_requires_them() {
    let env = TestEnv::new("");
    let (ca, cert, key) = make_certs(&env);
    let server_pw = env.path("server-password");
    fs::write(&server_pw, "correct horse battery staple\n").unwrap();
    let peer = Peer::start(
        &env,
        "smtp",
        0,
        &[
            "--tls-cert",
            s(&cert),
            "--tls-key",
            s(&key),
            "--require-starttls",
            "--auth-user",
            "alice",
            "--auth-password-file",
            s(&server_pw),
        ],
    );
    let client_pw = env.path("smtp-password");
    fs::write(&client_pw, "correct horse battery staple\n").unwrap();
    let config = |pw: &Path| {
        format!(
            r#"
[tasks.t]
command = "true"
{}"#,
            email_section(
                &format!("smtp://alice@127.0.0.1:{}", peer.port),
                &format!(
                    "tls = \"required\"\nca_file = \"{}\"\npassword_file = \"{}\"",
                    s(&ca),
                    s(pw)
                )
            )
        )
    };
    env.write_config(&config(&client_pw));
    let done = env.run(&["mail-test"]);
    done.assert_code(0);
    assert!(done.stdout.contains("250"), "{}", done.stdout);
    let msgs = peer.messages();
    assert_eq!(msgs.len(), 1, "{msgs:#?}");
    assert_eq!(
        msgs[0]["tls"], true,
        "delivered over STARTTLS: {:#}",
        msgs[0]
    );
    assert_eq!(
        msgs[0]["auth"], "alice",
        "authenticated as alice: {:#}",
        msgs[0]
    );
    assert!(
        done.stdout.contains(str_of(&msgs[0], "message_id")),
        "mail-test names the Message-ID it sent:\n{}",
        done.stdout
    );

    let wrong_pw = env.path("wrong-password");
    fs::write(&wrong_pw, "not the password\n").unwrap();
    env.write_config(&config(&wrong_pw));
    let bad = env.run(&["mail-test"]);
    bad.assert_code(70);
    assert!(
        bad.stderr.contains("535"),
        "the server's answer is reported: {bad:?}"
    );
    assert_eq!(peer.messages().len(), 1, "a mail was accepted without AUTH");
    assert!(
        peer.events_of("auth").iter().any(|e| e["ok"] == false),
        "the server saw a failed AUTH: {:#?}; peer stderr:\n{}",
        peer.events(),
        peer.stderr()
    );
}

/// `tls = "required"` never sends in clear text to a server that does not offer STARTTLS.
#[test]
fn tls_required_refuses_a_server_without_starttls() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "smtp", 0, &[]);
    env.write_config(&format!(
        "[tasks.t]\ncommand = \"true\"\n{}",
        email_section(&smtp_url(peer.port), "tls = \"required\"")
    ));
    let done = env.run(&["mail-test"]);
    assert!(
        matches!(done.code(), Some(c) if c != 0),
        "mail-test with tls = required against a plain server: {done:?}"
    );
    assert!(peer.messages().is_empty(), "{:#?}", peer.messages());
}

/// A server that accepts the connection and never answers: the mailer hangs in it, but the
/// chain keeps its schedule, hands over promptly to a new instance (well under the 30 s SMTP
/// timeout), and stops promptly; the unsent alert stays in the outbox.
#[test]
fn a_blackholed_server_never_stalls_the_chain_nor_its_hand_over() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "blackhole", 0, &["--blackhole"]);
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "300ms"

[tasks.tick]
command = 'echo tick >> "$T/ticks"; exit 1'
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
    let mut old = env.spawn(&["tick"]);
    old.wait_for("the mailer connected to the blackhole", || {
        !peer.events_of("connect").is_empty()
    });
    let connect_times = || -> Vec<f64> {
        peer.events_of("connect")
            .iter()
            .map(|e| e["t"].as_f64().unwrap())
            .collect()
    };
    // Asserts that now is well within the SMTP timeout of the connection made at `since`.
    let assert_within = |since: f64, what: &str| {
        let after = epoch_now() - since;
        assert!(
            after < WELL_WITHIN,
            "{what} only {after:.1}s after the mailer connected to the blackhole: it waited for \
             the mailer, whose connection hangs until the {SMTP_TIMEOUT}s SMTP timeout\n{:?}",
            peer.events()
        );
    };
    let first_connect = connect_times()[0];
    let n0 = env.lines("ticks").len();
    wait_until("the chain keeps its schedule", || {
        env.lines("ticks").len() >= n0 + 5
    });
    // A chain held up by its mailer would run again only once the SMTP timeout had closed
    // the connection.
    assert!(
        peer.events_of("close").is_empty(),
        "the mailer was still stuck in the blackhole meanwhile: {:?}",
        peer.events()
    );
    env.assert_running(&mut old, "tick");

    let started = Instant::now();
    let connects_before_new = connect_times().len();
    let mut new = env.spawn(&["tick"]);
    let pidfile = env.pidfile("tick");
    let new_pid = new.pid;
    new.wait_for("the new instance holds the lock", || {
        fs::read_to_string(&pidfile).ok() == Some(format!("{new_pid}\n"))
            && lock_holders(&pidfile) == vec![new_pid]
    });
    assert_within(first_connect, "the hand-over came");
    let took = started.elapsed();
    let handed_over = epoch_now();
    old.assert_exit(0);
    assert!(
        old.stderr()
            .lines()
            .all(|l| !l.contains("alert") || !l.contains(" sent")),
        "nothing can have been sent to a blackhole:\n{}",
        old.stderr()
    );
    // The new instance's mailer hangs in a connection of its own (if it made one yet).
    let new_connect = || {
        connect_times()
            .get(connects_before_new)
            .copied()
            .unwrap_or(handed_over)
    };
    let n1 = env.lines("ticks").len();
    env.wait_lines_while(&mut new, "ticks", n1 + 2);
    assert_within(new_connect(), "the new instance ran the chain");
    env.assert_running(&mut new, "tick");

    new.signal(libc::SIGTERM);
    let stop = Instant::now();
    new.assert_exit(0);
    assert_within(new_connect(), "the new instance exited on SIGTERM");
    assert!(
        !outbox(&env).is_empty(),
        "the unsent alert stays in the outbox"
    );
    eprintln!("hand-over took {took:?}, stop took {:?}", stop.elapsed());
}

/// A permanent rejection (550 to DATA): the alert is moved to outbox/failed/, the error is
/// logged, and the chain goes on.
#[test]
fn a_permanent_rejection_moves_the_alert_to_failed_and_the_chain_goes_on() {
    let env = TestEnv::new("");
    let peer = Peer::start(
        &env,
        "smtp",
        0,
        &["--data-always", "550 5.7.1 Rejected by policy"],
    );
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "300ms"

[tasks.bad]
command = 'echo tick >> "$T/ticks"; echo "error: no such table" >&2; exit 1'
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
    let mut runner = env.spawn(&["bad"]);
    // The mailer moves the file to failed/, then logs why: wait for both.
    let err = runner.stderr.clone();
    runner.wait_for(
        "the rejected alert is in outbox/failed/, and logged",
        || {
            failed(&env).len() == 1
                && TestEnv::logged_problems(&fs::read_to_string(&err).unwrap_or_default())
                    .iter()
                    .any(|l| l.contains("could not be delivered") && l.contains("550"))
        },
    );
    assert!(outbox(&env).is_empty(), "{:?}", outbox(&env));
    let n0 = env.lines("ticks").len();
    env.wait_lines_while(&mut runner, "ticks", n0 + 3);
    env.assert_running(&mut runner, "bad");
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    assert!(peer.messages().is_empty());
    let rejected = peer.events_of("rejected");
    assert_eq!(rejected.len(), 1, "a 5xx is not retried: {rejected:#?}");
    assert_eq!(
        str_of(&rejected[0], "message_id"),
        message_id_of(&failed(&env)[0])
    );
    let logged = TestEnv::logged_problems(&runner.stderr());
    assert!(
        logged
            .iter()
            .any(|l| l.contains("could not be delivered") && l.contains("550")),
        "the 550 is logged as an error: {logged:#?}"
    );
}

/// A temporary rejection (451 to the first DATA) is retried: the mail arrives, once, with the
/// same Message-ID as the rejected attempt, and the outbox ends empty.
#[test]
fn a_temporary_rejection_is_retried_and_delivered() {
    let env = TestEnv::new("");
    let peer = Peer::start(
        &env,
        "smtp",
        0,
        &["--data-reply", "451 4.3.0 Try again later"],
    );
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.once]
command = 'echo "error: timeout talking to the API" >&2; exit 1'
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
    let mut runner = env.spawn(&["once"]);
    let msgs = peer.wait_messages(&mut runner, 1);
    runner.wait_for("the outbox is empty", || outbox(&env).is_empty());
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    assert_eq!(peer.messages().len(), 1);
    let rejected = peer.events_of("rejected");
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert_eq!(rejected[0]["message_id"], msgs[0]["message_id"]);
    assert_eq!(str_of(&msgs[0], "alert"), "first-failure");
    assert!(rejected[0]["t"].as_f64() < msgs[0]["t"].as_f64());
    assert!(failed(&env).is_empty());
    assert!(
        runner
            .stderr()
            .lines()
            .any(|l| l.contains("not delivered yet") && l.contains("451")),
        "the 451 is logged:\n{}",
        runner.stderr()
    );
}

/// `mail-test` says what the server answered, and exits 70 for a permanent failure (550 to
/// RCPT), 75 for a temporary one (451 to DATA).
#[test]
fn mail_test_exit_status_follows_the_servers_answer() {
    let env = TestEnv::new("");
    let reject = Peer::start(
        &env,
        "reject",
        0,
        &["--rcpt-always", "550 5.1.1 No such user here"],
    );
    let later = Peer::start(
        &env,
        "later",
        0,
        &["--data-always", "451 4.3.0 Try again later"],
    );
    let config = |port| {
        format!(
            "[tasks.t]\ncommand = \"true\"\n{}",
            email_section(&smtp_url(port), "")
        )
    };
    env.write_config(&config(reject.port));
    let done = env.run(&["mail-test"]);
    done.assert_code(70);
    assert!(done.stderr.contains("550"), "{done:?}");
    assert_eq!(reject.events_of("rcpt").len(), 1);

    env.write_config(&config(later.port));
    let done = env.run(&["mail-test"]);
    done.assert_code(75);
    assert!(done.stderr.contains("451"), "{done:?}");
    assert!(later.messages().is_empty() && reject.messages().is_empty());
}

/// Task output that tries to forge a header (`\r\nBcc: x@y`) and carries invalid UTF-8 only
/// ever reaches the body: no Bcc header, no extra recipient, a body that decodes cleanly.
#[test]
fn task_output_never_reaches_a_header_and_invalid_utf8_is_encoded_safely() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "smtp", 0, &[]);
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.evil]
command = '''printf 'oops\r\nBcc: x@y.example\r\nSubject: forged\r\n\r\nbad \377\376 bytes\n'; exit 1'''
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
    let mut runner = env.spawn(&["evil"]);
    let msgs = peer.wait_messages(&mut runner, 1);
    runner.wait_for("the outbox is empty", || outbox(&env).is_empty());
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    let m = &msgs[0];
    assert_eq!(peer.messages().len(), 1);
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["admin@example.com"]),
        "{m:#}"
    );
    assert!(header(m, "Bcc").is_empty(), "a Bcc header: {m:#}");
    assert!(header(m, "Cc").is_empty(), "{m:#}");
    assert_eq!(header(m, "Subject").len(), 1, "{m:#}");
    assert!(!the_header(m, "Subject").contains("forged"), "{m:#}");
    assert_eq!(the_header(m, "To").trim(), "admin@example.com", "{m:#}");
    let raw = fs::read(str_of(m, "file")).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(
        !head.contains("x@y.example") && !head.contains("\nbcc:"),
        "{head}"
    );
    assert_eq!(
        m["body_utf8"], true,
        "the body decodes as its charset: {m:#}"
    );
    let body = str_of(m, "body").replace("\r\n", "\n");
    assert!(
        body.contains("Bcc: x@y.example"),
        "the output is in the body:\n{body}"
    );
    assert!(body.contains("bad ") && body.contains(" bytes"), "{body}");
}

// ---------------------------------------------------------------------------------------------
// The SMTP password never leaks.
// ---------------------------------------------------------------------------------------------

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A secret no file could contain by chance.
fn unique_secret() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("Pw-{}-{nanos}-qXz7", std::process::id())
}

/// Every file under `dir`, recursively, with its bytes.
fn files_under(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            files_under(&p, out);
        } else if meta.is_file() {
            if let Ok(bytes) = fs::read(&p) {
                out.push((p.display().to_string(), bytes));
            }
        }
    }
}

/// Runs a chain whose task fails (one alert, through STARTTLS + AUTH as alice) and dumps its
/// environment, then `mail-test`, `status`, `history`, `log` and `metrics`; asserts that the
/// secret (nor its base64 forms in an AUTH exchange) appears in none of their outputs, in no
/// file of RUN_ROOT, in no received mail, and not in the task's environment.
fn assert_password_never_leaks(password_key: &str, env_var: Option<(&str, &str)>, secret: &str) {
    let env = TestEnv::new("");
    let (ca, cert, key) = make_certs(&env);
    let server_pw = env.path("server-password");
    fs::write(&server_pw, format!("{secret}\n")).unwrap();
    let peer = Peer::start(
        &env,
        "smtp",
        0,
        &[
            "--tls-cert",
            s(&cert),
            "--tls-key",
            s(&key),
            "--require-starttls",
            "--auth-user",
            "alice",
            "--auth-password-file",
            s(&server_pw),
        ],
    );
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.leak]
command = 'env > "$T/task-env"; echo "the task ran"; exit 1'
{}"#,
        email_section(
            &format!("smtp://alice@127.0.0.1:{}", peer.port),
            &format!(
                "tls = \"required\"\nca_file = \"{}\"\n{password_key}",
                s(&ca)
            )
        )
    ));
    let with_secret = |mut cmd: std::process::Command| {
        if let Some((var, value)) = env_var {
            cmd.env(var, value);
        }
        cmd.env("RUST_LOG", "trace");
        cmd
    };
    let mut runner = env.spawn_command(with_secret(env.run_command(&["leak"])));
    let msgs = peer.wait_messages(&mut runner, 1);
    assert_eq!(
        msgs[0]["auth"], "alice",
        "the alert was sent with AUTH: {:#}",
        msgs[0]
    );
    assert_eq!(msgs[0]["tls"], true);
    runner.wait_for("the outbox is empty", || outbox(&env).is_empty());
    let test = env.finish_command(with_secret(env.run_command(&["mail-test"])));
    test.assert_code(0);
    assert!(
        test.stdout.contains("250"),
        "mail-test prints the server's answer: {test:?}"
    );
    assert_eq!(peer.messages().len(), 2);
    let argv = fs::read(format!("/proc/{}/cmdline", runner.pid)).unwrap();
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    let task_env = env.read("task-env");
    assert!(task_env.contains("RUN_CHAIN_TASK=leak"), "{task_env}");
    if let Some((var, _)) = env_var {
        assert!(
            !task_env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var} reached the task's environment:\n{task_env}"
        );
    }

    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("run-chain stdout".into(), runner.stdout().into_bytes()),
        ("run-chain stderr".into(), runner.stderr().into_bytes()),
        ("mail-test stdout".into(), test.stdout.clone().into_bytes()),
        ("mail-test stderr".into(), test.stderr.clone().into_bytes()),
        ("the task's environment".into(), task_env.into_bytes()),
        ("run-chain's argv".into(), argv),
    ];
    for args in [
        &["status", "--json"][..],
        &["history", "leak", "--json"],
        &["log", "leak"],
        &["metrics"],
    ] {
        let done = env.sub(args);
        haystacks.push((format!("{args:?} stdout"), done.stdout.into_bytes()));
        haystacks.push((format!("{args:?} stderr"), done.stderr.into_bytes()));
    }
    files_under(&env.run_root, &mut haystacks);
    files_under(&env.path("smtp.mails"), &mut haystacks);
    haystacks.push(("the server's log".into(), fs::read(&peer.log).unwrap()));
    assert!(
        haystacks.len() > 12,
        "{:?}",
        haystacks.iter().map(|h| &h.0).collect::<Vec<_>>()
    );

    let needles = [
        secret.to_owned(),
        base64(secret.as_bytes()).trim_end_matches('=').to_owned(),
        base64(format!("\0alice\0{secret}").as_bytes())
            .trim_end_matches('=')
            .to_owned(),
    ];
    for (what, bytes) in &haystacks {
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "the SMTP password ({needle:?}) appears in {what}"
            );
        }
    }
}

#[test]
fn the_password_from_password_env_never_leaks() {
    let secret = unique_secret();
    assert_password_never_leaks(
        "password_env = \"RUN_CHAIN_TEST_SMTP_PASSWORD\"",
        Some(("RUN_CHAIN_TEST_SMTP_PASSWORD", &secret)),
        &secret,
    );
}

#[test]
fn the_password_from_password_file_never_leaks() {
    let secret = unique_secret();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smtp-password");
    fs::write(&file, format!("{secret}\n")).unwrap();
    assert_password_never_leaks(&format!("password_file = \"{}\"", s(&file)), None, &secret);
}

// ---------------------------------------------------------------------------------------------
// What an alert shows (issue 17): the streak's last failed run in every mail, whenever it is
// sent, the real time of the next attempt, and a plain subject.
// ---------------------------------------------------------------------------------------------

/// A failing task's output: a Python traceback, on stderr.
const TRACEBACK: &str = r#"printf 'Traceback (most recent call last):\n  File "/srv/job.py", line 3, in <module>\n    print(1/0)\nZeroDivisionError: division by zero\n' >&2"#;

/// The body of a received mail, with plain line ends.
fn body_of(msg: &Value) -> String {
    str_of(msg, "body").replace("\r\n", "\n")
}

/// The value of the body's line `label` (e.g. "Started:"), trimmed.
fn field<'a>(body: &'a str, label: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no line {label:?} in the body:\n{body}"))
}

/// When the alert was decided (Unix ms): the first part of its Message-ID.
fn decided_ms(msg: &Value) -> u64 {
    let id = str_of(msg, "message_id");
    id.trim_start_matches('<')
        .split('.')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no decision time in the Message-ID {id}"))
}

/// How deep parentheses nest in `s`.
fn paren_depth(s: &str) -> i32 {
    let (mut depth, mut max) = (0, 0);
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        max = max.max(depth);
    }
    max
}

/// Seconds of a duration as the mail shows it: "12ms", "1.5s".
fn mail_secs(d: &str) -> f64 {
    if let Some(ms) = d.strip_suffix("ms") {
        ms.parse::<f64>().unwrap() / 1000.0
    } else if let Some(s) = d.strip_suffix('s') {
        s.parse().unwrap_or_else(|_| panic!("a duration: {d:?}"))
    } else {
        panic!("a duration: {d:?}")
    }
}

/// True if `s` holds a time of day "HH:MM".
fn has_hhmm(s: &str) -> bool {
    s.as_bytes().windows(5).any(|w| {
        w[0].is_ascii_digit()
            && w[1].is_ascii_digit()
            && w[2] == b':'
            && w[3].is_ascii_digit()
            && w[4].is_ascii_digit()
    })
}

/// The shown last failed run (outcome, start, duration, output) is the run `run` of history.
fn assert_shows_run(body: &str, run: &Value) {
    assert_eq!(field(body, "Outcome:"), "failed (exit code 1)", "{body}");
    assert_eq!(
        field(body, "Started:"),
        str_of(run, "start"),
        "the failed run's start: {body}\nthe run: {run:#}"
    );
    let shown = mail_secs(field(body, "Duration:"));
    let recorded = run["duration_seconds"].as_f64().unwrap();
    assert!(
        (shown - recorded).abs() <= 0.1,
        "duration {shown}s in the mail, {recorded}s recorded:\n{body}"
    );
    for want in [
        "Traceback (most recent call last):",
        "    print(1/0)",
        "ZeroDivisionError: division by zero",
        &format!("of output of run {}:", run_id(run)),
    ] {
        assert!(body.contains(want), "{want:?} is not in the body:\n{body}");
    }
    for not in ["still failing", "printed nothing", "when its turn"] {
        assert!(!body.contains(not), "{not:?} in the body:\n{body}");
    }
}

/// A downtime reminder decided between two runs of the failing task, while another task of
/// the chain runs, shows the last failed run (its traceback, outcome, start and duration) and
/// when the task is tried next: after the running task, at about a time of day.
#[test]
fn a_downtime_mail_between_runs_shows_the_last_failed_run_and_the_next_attempt() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "smtp", 0, &[]);
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1s"
fail_cooldown = "1s"
non_recoverable_downtime = "2s"
stop_grace = "200ms"

[tasks.crunch]
command = '''{TRACEBACK}; exit 1'''

[tasks.slow]
command = "sleep 60"
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
    let mut runner = env.spawn(&["crunch", "slow"]);
    let mut downtime = None;
    runner.wait_for("a downtime mail arrived", || {
        downtime = peer
            .messages()
            .into_iter()
            .find(|m| str_of(m, "alert") == "downtime");
        downtime.is_some()
    });
    let m = downtime.unwrap();
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    // Decided between runs of crunch: after its only run ended, while slow ran.
    let runs = env.history("crunch", &[]);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let at = decided_ms(&m) as f64 / 1000.0;
    assert!(
        time_of(&runs[0], "stop") < at,
        "the downtime mail ({at}) was decided after crunch's run: {runs:#?}"
    );
    let slow = env.history("slow", &[]);
    assert!(
        time_of(&slow[0], "start") < at,
        "decided while slow ran: {slow:#?}"
    );

    let body = body_of(&m);
    assert_shows_run(&body, &runs[0]);
    let next = field(&body, "Next attempt:");
    assert!(
        next.starts_with("after slow, ") && has_hhmm(next),
        "the next attempt is after slow, at about a time of day: {next:?}\n{body}"
    );
    let subject = the_header(&m, "Subject");
    assert!(
        subject.contains(": crunch in chain crunch_slow failing for ")
            && subject.ends_with(" (exit 1: ZeroDivisionError: division by zero)"),
        "{subject}"
    );
    assert_eq!(paren_depth(subject), 1, "{subject}");
}

/// Each kind of alert has one plain subject that names host, task and kind, with no
/// parentheses inside parentheses; a new-failure names the new error.
#[test]
fn subjects_of_each_kind_read_plainly_and_name_the_error() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "smtp", 0, &[]);
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1s"
non_recoverable_downtime = "3s"

[tasks.flaky]
command = '''
n=$(( $(cat "$T/count" 2>/dev/null || echo 0) + 1 )); echo $n > "$T/count"
if [ -e "$T/fixed" ]; then echo fine; exit 0; fi
if [ $n = 1 ]; then {TRACEBACK}; exit 1; fi
echo "KeyError: 'x'" >&2; exit 1
'''
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
    let mut runner = env.spawn(&["flaky"]);
    runner.wait_for("a downtime mail arrived", || {
        kinds(&peer.messages()).iter().any(|k| k == "downtime")
    });
    fs::write(env.path("fixed"), "").unwrap();
    runner.wait_for("a recovered mail arrived", || {
        kinds(&peer.messages()).iter().any(|k| k == "recovered")
    });
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);

    let msgs = peer.messages();
    let k = kinds(&msgs);
    assert_eq!(k[..2], ["first-failure", "new-failure"], "{k:?}");
    assert_eq!(k.last().unwrap(), "recovered", "{k:?}");
    for m in &msgs {
        let kind = str_of(m, "alert");
        let subject = the_header(m, "Subject");
        assert!(subject.starts_with("[run-chain] "), "{subject}");
        assert_eq!(paren_depth(subject), 1, "{kind}: {subject}");
        if kind.contains('-') {
            assert!(
                !subject.contains(kind),
                "the kind in plain words: {subject}"
            );
        }
        let rest = subject.split_once(": ").map(|x| x.1).unwrap_or_default();
        match kind {
            "first-failure" => assert_eq!(
                rest,
                "flaky failed (exit 1: ZeroDivisionError: division by zero)"
            ),
            "new-failure" => assert_eq!(
                rest,
                "flaky failing with a new error (exit 1: KeyError: 'x')"
            ),
            "downtime" => assert!(
                rest.starts_with("flaky failing for ")
                    && rest.ends_with("s (exit 1: KeyError: 'x')"),
                "{subject}"
            ),
            "recovered" => assert!(
                rest.starts_with("flaky recovered after ") && rest.ends_with(" failures)"),
                "{subject}"
            ),
            other => panic!("an alert of kind {other}: {subject}"),
        }
    }
    // The recovered mail names the run that succeeded and still shows the last failure.
    let body = body_of(msgs.last().unwrap());
    assert!(body.contains("Recovered by:  run "), "{body}");
    assert_eq!(field(&body, "Outcome:"), "failed (exit code 1)", "{body}");
    assert!(body.contains("KeyError: 'x'"), "{body}");
}

/// The failing task of a single-task chain, its first-failure mailed, `fail_cooldown` 1h.
fn failing_job(env: &TestEnv, peer: &Peer, window: &str) {
    env.write_config(&format!(
        r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
non_recoverable_downtime = "{window}"

[tasks.job]
command = '''{TRACEBACK}; exit 1'''
{}"#,
        email_section(&smtp_url(peer.port), "")
    ));
}

/// Relaunched (an upgrade) between runs of a failing task, the new instance sends the
/// downtime reminder: it shows the last failed run, which the old instance ran (its
/// traceback, outcome, start and duration), and the real time of the next attempt (the due
/// time carried over, an hour after the failure).
#[test]
fn a_downtime_mail_from_a_relaunched_instance_shows_the_last_failed_run() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "smtp", 0, &[]);
    // The old instance's window is an hour: the downtime mail can only be the new one's.
    failing_job(&env, &peer, "1h");
    let mut old = env.spawn(&["job"]);
    peer.wait_messages(&mut old, 1);
    // Delivery is at least once: an instance stopped between the server's acceptance and the
    // outbox file's removal leaves the mail for the next one, which sends it again (same
    // Message-ID). Wait until the old instance has recorded it as sent.
    old.wait_for("the first-failure left the outbox", || {
        outbox(&env).is_empty()
    });
    failing_job(&env, &peer, "2s");
    let mut new = env.spawn(&["job"]);
    old.assert_exit(0);
    let msgs = peer.wait_messages(&mut new, 2);
    env.assert_running(&mut new, "job");
    new.signal(libc::SIGTERM);
    new.assert_exit(0);

    assert_eq!(kinds(&msgs), ["first-failure", "downtime"]);
    let runs = env.history("job", &[]);
    assert_eq!(runs.len(), 1, "no run between: {runs:#?}");
    assert_eq!(runs[0]["instance"]["pid"], old.pid, "{runs:#?}");
    let body = body_of(&msgs[1]);
    assert_shows_run(&body, &runs[0]);
    // "HH:MM ZONE, in 59m 58s (RFC 3339)": the due time carried over.
    let next = field(&body, "Next attempt:");
    let due = next
        .rsplit_once('(')
        .and_then(|(_, t)| rfc3339(t.trim_end_matches(')')))
        .unwrap_or_else(|| panic!("no RFC 3339 time in the next attempt {next:?}"));
    let expected = time_of(&runs[0], "stop") + 3600.0;
    assert!(
        (due - expected).abs() < 5.0 && has_hhmm(next) && next.contains(", in 59m"),
        "next attempt {next:?}: expected about {expected}"
    );
    let subject = the_header(&msgs[1], "Subject");
    assert!(
        subject.contains(": job failing for ")
            && subject.ends_with(" (exit 1: ZeroDivisionError: division by zero)"),
        "{subject}"
    );
}

/// A relaunched instance that cannot find the failed run in the record store (here: the
/// store was removed between the two instances) still sends a correct downtime mail with what
/// CHAIN.state carries: the outcome, start and duration, the last line of output, and why the
/// output is missing.
#[test]
fn a_relaunched_instance_without_the_run_in_the_store_still_shows_what_it_knows() {
    let env = TestEnv::new("");
    let peer = Peer::start(&env, "smtp", 0, &[]);
    failing_job(&env, &peer, "1h");
    let mut old = env.spawn(&["job"]);
    peer.wait_messages(&mut old, 1);
    // Delivery is at least once: an instance stopped between the server's acceptance and the
    // outbox file's removal leaves the mail for the next one, which sends it again (same
    // Message-ID). Wait until the old instance has recorded it as sent.
    old.wait_for("the first-failure left the outbox", || {
        outbox(&env).is_empty()
    });
    old.signal(libc::SIGTERM);
    old.assert_exit(0);
    let runs = env.history("job", &[]);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    for name in ["runs.db", "runs.db-wal", "runs.db-shm"] {
        let _ = fs::remove_file(env.run_root.join(name));
    }

    failing_job(&env, &peer, "2s");
    let mut new = env.spawn(&["job"]);
    let msgs = peer.wait_messages(&mut new, 2);
    env.assert_running(&mut new, "job");
    new.signal(libc::SIGTERM);
    new.assert_exit(0);

    assert_eq!(kinds(&msgs), ["first-failure", "downtime"]);
    let body = body_of(&msgs[1]);
    assert_eq!(field(&body, "Outcome:"), "failed (exit code 1)", "{body}");
    assert_eq!(
        field(&body, "Started:"),
        str_of(&runs[0], "start"),
        "{body}"
    );
    let shown = mail_secs(field(&body, "Duration:"));
    assert!(
        (shown - runs[0]["duration_seconds"].as_f64().unwrap()).abs() <= 0.1,
        "{body}"
    );
    assert!(
        body.contains("The output of run 1 is not in the record store")
            && body.contains("Its last line of output:\n\nZeroDivisionError: division by zero"),
        "{body}"
    );
    assert!(has_hhmm(field(&body, "Next attempt:")), "{body}");
    assert!(
        the_header(&msgs[1], "Subject").ends_with(" (exit 1: ZeroDivisionError: division by zero)"),
        "{msgs:#?}"
    );
}
