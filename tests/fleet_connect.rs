//! The fleet store's connection, through `run-chain check`, against a real PostgreSQL 15
//! (tests/support/pg.rs: roles runchain (SCRAM), clear_user (pg_hba `password`), md5_user
//! (`md5`); TLS on, with a test CA for localhost and 127.0.0.1; log_connections on).
//!
//! - plaintext SCRAM on loopback and over the Unix socket; TLS required and opportunistic
//!   with `ca_file` (verified); a host name the certificate does not name, or no `ca_file`
//!   (unknown issuer): 78, with no silent fallback to plaintext;
//! - cleartext and MD5 roles without TLS: 78, and the server never receives a password
//!   (its log has no authentication attempt for them; with verified TLS, the control, the
//!   same role authenticates, so the log would show one);
//! - a wrong password, a database that is not run-chain's (a `run_chain` schema without
//!   meta, a meta row of another application): 78, nothing changed;
//! - a password in the URL: 78 before any connection (a listener of ours sees none);
//! - an unreachable database (a closed port): a warning, exit 0 (not a config error);
//! - `check` never creates anything; the password appears in no output;
//! - `password_env` is removed from the tasks' environment.

mod common;
mod support;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::*;
use support::pg::Pg;

/// A config with one task and `[store]` as given.
fn config(store: &str) -> String {
    format!("[tasks.a]\ncommand = \"true\"\nkill_grace = \"1s\"\n\n[store]\n{store}\n")
}

/// `url`, `password_file` (runchain's password, written into the test's dir) and `extra`.
fn store_with_password(env_dir: &Path, pg: &Pg, url: &str, extra: &str) -> String {
    let pw = pg.write_runchain_password(&env_dir.join("pg-password"));
    format!(
        "url = \"{url}\"\npassword_file = \"{}\"\n{extra}",
        pw.display()
    )
}

/// `check` with the store's config, RUST_LOG=trace so that any log line would show a secret.
fn check(env: &TestEnv) -> Finished {
    let mut cmd = env.sub_command(&["check"]);
    cmd.env("RUST_LOG", "trace");
    env.finish_command(cmd)
}

fn assert_no_secret(done: &Finished, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !done.stdout.contains(s) && !done.stderr.contains(s),
            "a password appears in check's output:\nstdout:\n{}\nstderr:\n{}",
            done.stdout,
            done.stderr
        );
    }
}

/// Whether the database has a `run_chain` schema.
fn has_schema(pg: &Pg, db: &str) -> bool {
    pg.psql(
        db,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'run_chain'",
    ) == "1"
}

/// Every relation, column and row of the `run_chain` schema, and the schemas: what a
/// change would show.
fn dump(pg: &Pg, db: &str) -> String {
    let catalog = pg.psql(
        db,
        "SELECT string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || \
         coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum) \
                   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''), \
                   E'\\n' ORDER BY n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
    );
    let schemas = pg.psql(
        db,
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace",
    );
    format!("{schemas}\n{catalog}")
}

#[test]
fn plaintext_scram_on_loopback_and_unix_socket() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("plain");
    let env = TestEnv::new("");
    env.write_config(&config(&store_with_password(
        env.root(),
        pg,
        &url,
        "lease = \"10s\"",
    )));
    let done = check(&env);
    done.assert_code(0);
    assert!(
        done.stdout.contains(&format!(
            "# store: connected to runchain@127.0.0.1:{}/{db}",
            pg.port
        )) && done.stdout.contains("no TLS, SCRAM-SHA-256 only")
            && done.stdout.contains("PostgreSQL 15")
            && done
                .stdout
                .contains("# store: schema not created yet (created at the first launch)"),
        "{}",
        done.stdout
    );
    // The [store] section as read: the URL without secret, TLS's default on loopback, the
    // lease and its derived times, this host.
    for line in [
        format!("url                      = \"postgresql://runchain@127.0.0.1:{}/{db}\"", pg.port),
        "lease                    = \"10s\"".to_string(),
        "# renewed every 2s (lease/5); an owner that cannot renew stops its task: SIGTERM at 6s, SIGKILL at 8s after its last renewal".to_string(),
    ] {
        assert!(done.stdout.contains(&line), "no {line:?} in:\n{}", done.stdout);
    }
    assert!(
        done.stdout.contains("tls ")
            && done
                .stdout
                .contains("= \"none\"  # the default on loopback"),
        "{}",
        done.stdout
    );
    assert_no_secret(&done, &[pg.password()]);
    assert!(!has_schema(pg, &db), "check created the schema");

    // The Unix socket: the same, TLS none by default.
    let sock_url = format!(
        "postgresql://runchain@/{db}?host={}&port={}",
        pg.socket_dir().display(),
        pg.port
    );
    env.write_config(&config(&store_with_password(env.root(), pg, &sock_url, "")));
    let done = check(&env);
    done.assert_code(0);
    assert!(
        done.stdout.contains(&format!(
            "# store: connected to runchain@{}:{}/{db}",
            pg.socket_dir().display(),
            pg.port
        )),
        "{}",
        done.stdout
    );
    assert_no_secret(&done, &[pg.password()]);
}

#[test]
fn tls_verified_with_ca_file() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("tls");
    let ca = pg.ca_file().display().to_string();
    for host in ["localhost", "127.0.0.1"] {
        for tls in ["required", "opportunistic"] {
            let url = url.replace("127.0.0.1", host);
            let env = TestEnv::new("");
            env.write_config(&config(&store_with_password(
                env.root(),
                pg,
                &url,
                &format!("tls = \"{tls}\"\nca_file = \"{ca}\""),
            )));
            let done = check(&env);
            done.assert_code(0);
            assert!(
                done.stdout
                    .contains("TLS, certificate and host name verified"),
                "{host} {tls}: {}",
                done.stdout
            );
            assert_no_secret(&done, &[pg.password()]);
        }
    }
}

#[test]
fn tls_that_cannot_be_verified_is_refused_without_fallback() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("tlsbad");
    let ca = pg.ca_file().display().to_string();
    // 127.0.0.2 reaches the same server (loopback), but the certificate names only
    // localhost and 127.0.0.1.
    let cases = [
        (
            url.replace("127.0.0.1", "127.0.0.2"),
            format!("tls = \"required\"\nca_file = \"{ca}\""),
            "certificate not valid for name \"127.0.0.2\"",
        ),
        // No ca_file: the test CA is no system root.
        (
            url.clone(),
            "tls = \"required\"".to_string(),
            "UnknownIssuer",
        ),
        // Opportunistic: the server offers TLS, so it must verify; no plaintext after 'S'.
        (
            url.clone(),
            "tls = \"opportunistic\"".to_string(),
            "UnknownIssuer",
        ),
    ];
    for (url, extra, why) in cases {
        let env = TestEnv::new("");
        env.write_config(&config(&store_with_password(env.root(), pg, &url, &extra)));
        let done = check(&env);
        done.assert_code(78);
        assert!(
            done.stderr.contains("store: ") && done.stderr.contains(why),
            "{url} {extra}: {}",
            done.stderr
        );
        assert_no_secret(&done, &[pg.password()]);
    }
}

/// The server's log lines about `user`'s authentication (log_line_prefix has `%u@%d`).
fn auth_lines(pg: &Pg, user: &str) -> Vec<String> {
    pg.log_text()
        .lines()
        .filter(|l| {
            l.contains(&format!("user \"{user}\""))
                || l.contains(&format!("identity=\"{user}\""))
                || l.contains(&format!("] {user}@"))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn cleartext_and_md5_are_refused_without_verified_tls() {
    let pg = Pg::shared();
    let (db, _) = pg.fresh_database("weakauth");
    for (user, password, what) in [
        ("clear_user", pg.clear_password(), "clear text"),
        ("md5_user", pg.md5_password(), "MD5"),
    ] {
        let env = TestEnv::new("");
        let pw = Pg::write_password_file(&env.path("pw"), password);
        let url = pg.url(user, "127.0.0.1", &db);
        let before = auth_lines(pg, user);
        // tls = "none", and no tls key (the default on loopback: none).
        for tls in ["tls = \"none\"", ""] {
            env.write_config(&config(&format!(
                "url = \"{url}\"\npassword_file = \"{}\"\n{tls}",
                pw.display()
            )));
            let done = check(&env);
            done.assert_code(78);
            assert!(
                done.stderr.contains(what) && done.stderr.contains("SCRAM-SHA-256"),
                "{user}: {}",
                done.stderr
            );
            assert_no_secret(&done, &[password]);
        }
        // No authentication attempt reached the server (the client hung up at the request).
        let after = auth_lines(pg, user);
        assert_eq!(
            after, before,
            "{user}: the server saw an authentication attempt"
        );

        // The control: with verified TLS the same role authenticates, and the log shows it.
        env.write_config(&config(&format!(
            "url = \"{}\"\npassword_file = \"{}\"\ntls = \"required\"\nca_file = \"{}\"",
            url.replace("127.0.0.1", "localhost"),
            pw.display(),
            pg.ca_file().display()
        )));
        let done = check(&env);
        done.assert_code(0);
        assert!(
            done.stdout
                .contains("TLS, certificate and host name verified"),
            "{}",
            done.stdout
        );
        wait_until(&format!("the server logs {user}'s authentication"), || {
            auth_lines(pg, user).len() > after.len()
        });
    }
}

#[test]
fn wrong_password_exits_78() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("wrongpw");
    let env = TestEnv::new("");
    let pw = Pg::write_password_file(&env.path("pw"), "not-the-password-4711");
    env.write_config(&config(&format!(
        "url = \"{url}\"\npassword_file = \"{}\"",
        pw.display()
    )));
    let done = check(&env);
    done.assert_code(78);
    assert!(
        done.stderr.contains("password authentication failed") && done.stderr.contains("28P01"),
        "{}",
        done.stderr
    );
    assert_no_secret(&done, &["not-the-password-4711", pg.password()]);

    // The password from password_env, wrong too: the same.
    let mut cmd = env.sub_command(&["check"]);
    env.write_config(&config(&format!(
        "url = \"{url}\"\npassword_env = \"RC_TEST_PG_PW\""
    )));
    cmd.env("RC_TEST_PG_PW", "env-password-0815");
    let done = env.finish_command(cmd);
    done.assert_code(78);
    assert_no_secret(&done, &["env-password-0815"]);
}

#[test]
fn a_database_that_is_not_run_chains_is_refused_and_left_alone() {
    let pg = Pg::shared();
    let cases = [
        // A run_chain schema of someone else's, without meta.
        ("SET ROLE runchain; CREATE SCHEMA run_chain; CREATE TABLE run_chain.jobs (id int); INSERT INTO run_chain.jobs VALUES (1);", "not run-chain's database"),
        // A meta row of another application.
        ("SET ROLE runchain; CREATE SCHEMA run_chain; CREATE TABLE run_chain.meta (one bool PRIMARY KEY DEFAULT true, app text NOT NULL, version int NOT NULL); INSERT INTO run_chain.meta (app, version) VALUES ('other-app', 1);", "not run-chain's database"),
        // A meta table of another shape.
        ("SET ROLE runchain; CREATE SCHEMA run_chain; CREATE TABLE run_chain.meta (k text, v text); INSERT INTO run_chain.meta VALUES ('x', 'y');", "not run-chain's database"),
        // A run_chain schema the role may not read: the server's refusal, as it is.
        ("CREATE SCHEMA run_chain; CREATE TABLE run_chain.meta (one bool PRIMARY KEY DEFAULT true, app text NOT NULL, version int NOT NULL); INSERT INTO run_chain.meta (app, version) VALUES ('run-chain', 1);", "permission denied"),
    ];
    for (setup, needle) in cases {
        let (db, url) = pg.fresh_database("foreign");
        pg.psql(&db, setup);
        let before = dump(pg, &db);
        let env = TestEnv::new("");
        env.write_config(&config(&store_with_password(env.root(), pg, &url, "")));
        let done = check(&env);
        done.assert_code(78);
        assert!(done.stderr.contains(needle), "{setup}: {}", done.stderr);
        assert_eq!(dump(pg, &db), before, "{setup}: the database changed");
    }
}

#[test]
fn a_password_in_the_url_is_refused_before_any_connection() {
    // A listener of ours stands for the server: it must never be connected to.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    for url in [
        format!("postgresql://runchain:hunter2secret@127.0.0.1:{port}/db"),
        format!("postgresql://runchain@127.0.0.1:{port}/db?password=hunter2secret"),
    ] {
        let env = TestEnv::new(&config(&format!("url = \"{url}\"")));
        let done = check(&env);
        done.assert_code(78);
        assert!(
            done.stderr.contains("store.url") && done.stderr.contains("password_file"),
            "{}",
            done.stderr
        );
        assert_no_secret(&done, &["hunter2secret"]);
        // A launch too: refused before anything happens.
        let mut cmd = env.run_command(&["--once", "a"]);
        cmd.env("RUST_LOG", "trace");
        let done = env.finish_command(cmd);
        done.assert_code(78);
        assert_no_secret(&done, &["hunter2secret"]);
        assert!(!env.run_root.exists(), "a refused launch created RUN_ROOT");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the URL's port: {other:?}"),
    }
}

#[test]
fn an_unreachable_database_is_a_warning_not_a_config_error() {
    // A port where nothing listens (bound, then closed).
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let env = TestEnv::new(&config(&format!(
        "url = \"postgresql://runchain@127.0.0.1:{port}/db\"\nlease = \"2s\""
    )));
    let started = std::time::Instant::now();
    let done = check(&env);
    done.assert_code(0);
    assert!(
        done.stderr
            .contains("warning: cannot reach the database now")
            && done.stdout.contains("# store: cannot reach"),
        "stdout:\n{}\nstderr:\n{}",
        done.stdout,
        done.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn check_warns_when_kill_grace_exceeds_a_fifth_of_the_lease() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let env = TestEnv::new(&format!(
        "[tasks.a]\ncommand = \"true\"\nkill_grace = \"3s\"\n[tasks.b]\ncommand = \"true\"\nkill_grace = \"2s\"\n\
         [store]\nurl = \"postgresql://runchain@127.0.0.1:{port}/db\"\nlease = \"10s\"\n"
    ));
    let done = check(&env);
    done.assert_code(0);
    assert!(
        done.stderr
            .contains("tasks.a.kill_grace = 3s exceeds 0.2 × store.lease (2s)"),
        "{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("tasks.b.kill_grace"),
        "{}",
        done.stderr
    );
}

/// `password_env`'s variable reaches no task (as [email]'s). With the lease in place the
/// launch connects first: the URL is the test server's, the password right.
#[test]
fn password_env_is_removed_from_the_tasks_environment() {
    let pg = Pg::shared();
    let (_db, url) = pg.fresh_database("envrm");
    let env = TestEnv::new(&format!(
        "[tasks.a]\ncommand = 'env > \"$T/task-env\"'\n\n[store]\nurl = \"{url}\"\npassword_env = \"RC_TEST_STORE_PW\"\nlease = \"5s\"\n"
    ));
    let mut cmd = env.run_command(&["--once", "a"]);
    cmd.env("RC_TEST_STORE_PW", pg.password());
    let done = env.finish_command(cmd);
    done.assert_code(0);
    let task_env = env.read("task-env");
    assert!(task_env.contains("RUN_CHAIN_TASK=a"), "{task_env}");
    assert!(
        !task_env.contains("RC_TEST_STORE_PW") && !task_env.contains(pg.password()),
        "the store's password reached the task:\n{task_env}"
    );
    assert_no_secret(&done, &[pg.password()]);
}

/// A peer that answers SSLRequest with 'N' (a server with ssl off), then, if the client
/// goes on in plaintext, asks for a cleartext password: what it received after that.
/// What the peer received: the SSLRequest, and what came after its cleartext request.
type Received = (Vec<u8>, Vec<u8>);

fn no_tls_peer() -> (u16, std::thread::JoinHandle<Received>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut req = [0u8; 8];
        s.read_exact(&mut req).expect("SSLRequest");
        s.write_all(b"N").expect("N");
        // The startup message (or EOF: the client gave up).
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return (req.to_vec(), Vec::new());
        }
        let mut rest = vec![0u8; (i32::from_be_bytes(len) as usize).saturating_sub(4)];
        s.read_exact(&mut rest).expect("startup");
        // AuthenticationCleartextPassword.
        s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).expect("R 3");
        let mut after = Vec::new();
        let _ = s.read_to_end(&mut after);
        (req.to_vec(), after)
    });
    (port, t)
}

/// A server without TLS: `required` refuses it (78) after the SSLRequest; `opportunistic`
/// goes on in plaintext, where the cleartext request is refused and no password is sent.
#[test]
fn a_server_without_tls() {
    let ssl_request = [0u8, 0, 0, 8, 4, 210, 22, 47].to_vec();
    for (tls, message) in [
        ("required", "does not offer TLS"),
        ("opportunistic", "clear text"),
    ] {
        let (port, peer) = no_tls_peer();
        let env = TestEnv::new("");
        let pw = Pg::write_password_file(&env.path("pw"), "peer-must-not-see-this");
        env.write_config(&config(&format!(
            "url = \"postgresql://runchain@127.0.0.1:{port}/db\"\npassword_file = \"{}\"\ntls = \"{tls}\"",
            pw.display()
        )));
        let done = check(&env);
        done.assert_code(78);
        assert!(done.stderr.contains(message), "{tls}: {}", done.stderr);
        let (req, after) = peer.join().expect("peer");
        assert_eq!(req, ssl_request, "{tls}");
        assert!(after.is_empty(), "{tls}: the client sent {after:?}");
    }
}

/// `check` reads the schema's version (made here by hand as run-chain would): current,
/// older (migrated at the next launch), newer (78: this run-chain is too old); nothing changes.
#[test]
fn check_reports_the_schema_version() {
    let pg = Pg::shared();
    for (version, code, needle) in [
        (5, 0, "# store: schema version 5 (current)"),
        (
            4,
            0,
            "# store: schema version 4 (migrated to 5 at the next launch)",
        ),
        (99, 78, "version 99, newer than this run-chain (5)"),
    ] {
        let (db, url) = pg.fresh_database("version");
        pg.psql(
            &db,
            &format!(
                "SET ROLE runchain; CREATE SCHEMA run_chain; \
                 CREATE TABLE run_chain.meta (one bool PRIMARY KEY DEFAULT true CHECK (one), app text NOT NULL, version int NOT NULL); \
                 INSERT INTO run_chain.meta (app, version) VALUES ('run-chain', {version});"
            ),
        );
        let before = dump(pg, &db);
        let env = TestEnv::new("");
        env.write_config(&config(&store_with_password(env.root(), pg, &url, "")));
        let done = check(&env);
        done.assert_code(code);
        assert!(
            done.stdout.contains(needle) || done.stderr.contains(needle),
            "stdout:\n{}\nstderr:\n{}",
            done.stdout,
            done.stderr
        );
        assert_eq!(dump(pg, &db), before, "check changed the database");
    }
}
