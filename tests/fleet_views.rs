//! Seeing the fleet (issue 20, the read side) against a real PostgreSQL: "hosts" are
//! RUN_ROOTs with `host = "h1"`, `"h2"`, `"h3"` sharing one database, `lease = "2s"`.
//! Chain `a` is owned by h1 with h2 its standby, chain `b` the other way round; h3 runs
//! nothing.
//!
//! Cases: `status` (text and --json) on every host shows both chains with their owner,
//! epoch, lease expiry and standbys, and the host's own process facts; a host's metrics
//! export the chains it owns (runs, owner) and those it is a standby of (standby gauge),
//! `serve --fleet` every chain; each run is counted once across the hosts; promtool is
//! clean on all; the console of a host that does not own a chain shows its owner and no
//! action buttons (the owner's does); `status` of 200 chains over 3 hosts, timed.

mod common;
mod console_support;
#[path = "support/fleet.rs"]
mod fleet;
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{bin, wait_until, TestEnv};
use console_support::{get, start_serve};
use fleet::{status_json, text, wait_stderr};
use serde_json::Value;
use support::pg::Pg;

const LEASE: &str = "2s";

/// One "host" (tests/support/fleet.rs): chains `a` and `b`, cooldowns 300 ms.
fn host(pg: &Pg, name: &str, url: &str) -> TestEnv {
    let tasks = "\n[tasks.a]\ncommand = \"echo a\"\n[tasks.b]\ncommand = \"echo b\"\n";
    let rest = format!("{}{tasks}", fleet::defaults("300ms", "200ms"));
    fleet::host_env(pg, name, url, LEASE, &rest)
}

fn chain<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["chains"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["chain"] == name))
        .unwrap_or_else(|| panic!("no chain {name} in {doc:#}"))
}

/// The epoch of chain `chain`'s lease row.
fn epoch(pg: &Pg, db: &str, chain: &str) -> i64 {
    pg.psql(
        db,
        &format!("SELECT epoch FROM run_chain.leases WHERE chain = '{chain}'"),
    )
    .trim()
    .parse()
    .expect("epoch")
}

/// The samples of an exposition: (name, labels as `k=v,...` sorted) -> value.
fn samples(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (head, value) = line.rsplit_once(' ').expect("sample");
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut ls: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
        ls.sort_unstable();
        let labels = ls.join(",").replace('"', "");
        out.insert(
            (name.to_string(), labels),
            value.parse().unwrap_or(f64::NAN),
        );
    }
    out
}

fn value(s: &BTreeMap<(String, String), f64>, name: &str, labels: &str) -> Option<f64> {
    s.get(&(name.to_string(), labels.to_string())).copied()
}

/// Where promtool is (as tests/metrics.rs finds it): `$RUN_CHAIN_PROMTOOL`, else the copy
/// scripts/test unpacks in TARGET/peers/prometheus, else PATH.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("RUN_CHAIN_PROMTOOL") {
        return PathBuf::from(p);
    }
    let unpacked = Path::new(bin())
        .ancestors()
        .skip(2)
        .take(2)
        .map(|d| d.join("peers/prometheus/usr/bin/promtool"));
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("promtool"));
    unpacked
        .chain(in_path)
        .find(|p| p.is_file())
        .expect("promtool not found: run scripts/test (it unpacks Debian's prometheus)")
}

/// `promtool check metrics` exits 0 and says nothing (a lint warning is a failure).
fn assert_promtool_clean(what: &str, text: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = text.to_owned();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("promtool");
    w.join().expect("writer");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.is_empty(),
        "{what}: promtool said {said}\non:\n{text}"
    );
}

fn metrics(env: &TestEnv) -> String {
    let out = env.sub(&["metrics"]);
    out.assert_code(0);
    out.stdout
}

#[test]
fn every_host_sees_both_chains_owners_standbys_and_metrics_count_each_run_once() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("views");
    let h1 = host(pg, "h1", &url);
    let h2 = host(pg, "h2", &url);
    let h3 = host(pg, "h3", &url);
    let mut a1 = h1.spawn(&["a"]);
    wait_stderr(&mut a1, "h1 owns a", "a: fleet: owner (epoch ");
    let mut b2 = h2.spawn(&["b"]);
    wait_stderr(&mut b2, "h2 owns b", "b: fleet: owner (epoch ");
    let mut a2 = h2.spawn(&["a"]);
    wait_stderr(
        &mut a2,
        "h2 waits for a",
        "a: fleet: standby: the chain runs on host h1",
    );
    let mut b1 = h1.spawn(&["b"]);
    wait_stderr(
        &mut b1,
        "h1 waits for b",
        "b: fleet: standby: the chain runs on host h2",
    );
    let ea = epoch(pg, &db, "a");
    let eb = epoch(pg, &db, "b");

    // status --json on every host: both chains, owner, epoch, expiry, standbys.
    for (env, me) in [(&h1, "h1"), (&h2, "h2"), (&h3, "h3")] {
        wait_until(&format!("{me}'s status shows both standbys"), || {
            let doc = status_json(env);
            chain(&doc, "a")["fleet"]["standbys"][0]["host"] == "h2"
                && chain(&doc, "b")["fleet"]["standbys"][0]["host"] == "h1"
        });
        let doc = status_json(env);
        for (c, owner, e, standby) in [("a", "h1", ea, "h2"), ("b", "h2", eb, "h1")] {
            let v = chain(&doc, c);
            let f = &v["fleet"];
            assert_eq!(f["host"], owner, "{me} {c}: {v:#}");
            assert_eq!(f["epoch"], e, "{me} {c}: {v:#}");
            assert!(f["expires"].is_string(), "{me} {c}: {v:#}");
            assert_eq!(f["failovers"], 0, "{me} {c}: {v:#}");
            assert_eq!(f["fenced_writes"], 0, "{me} {c}: {v:#}");
            let standbys: Vec<&str> = f["standbys"]
                .as_array()
                .expect("standbys")
                .iter()
                .filter_map(|s| s["host"].as_str())
                .collect();
            assert_eq!(standbys, [standby], "{me} {c}: {v:#}");
            let role = if me == owner {
                "owner"
            } else if me == standby {
                "standby"
            } else {
                "none"
            };
            assert_eq!(f["role"], role, "{me} {c}: {v:#}");
            // This host's process facts: a pid and up only where an instance runs here.
            assert_eq!(v["up"], me != "h3", "{me} {c}: {v:#}");
            assert_eq!(v["pid"].is_number(), me != "h3", "{me} {c}: {v:#}");
            if me == "h3" {
                assert!(
                    ["elsewhere", "running", "cooldown"]
                        .contains(&v["now"]["state"].as_str().unwrap_or("")),
                    "{v:#}"
                );
            }
            let keys: Vec<&String> = f.as_object().expect("fleet").keys().collect();
            assert_eq!(
                keys,
                [
                    "epoch",
                    "error",
                    "expires",
                    "failovers",
                    "fenced_writes",
                    "host",
                    "role",
                    "standbys"
                ],
                "the fleet object's keys and their order"
            );
        }
    }
    // The text.
    let out = h2.sub(&["status"]);
    out.assert_code(0);
    let t = &out.stdout;
    assert!(
        t.contains(&format!(
            "  fleet: owner, as host h2 (epoch {eb}); lease expires in "
        )) && t.contains("; standbys: h1\n"),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "  fleet: standby; the chain runs on host h1 (epoch {ea}); lease expires in "
        )) && t.contains("; standbys: h2\n"),
        "{t}"
    );
    let t = h3.sub(&["status"]).stdout;
    assert!(
        t.contains(&format!("a: runs on another host\n  fleet: runs on host h1 (epoch {ea}); no instance here; lease expires in "))
            || t.contains(&format!("  fleet: runs on host h1 (epoch {ea}); no instance here")),
        "{t}"
    );

    // Metrics: a host exports what it owns (runs, owner) and what it waits for (standby).
    wait_until("h1 and h2 each ran their chain twice", || {
        let s1 = samples(&metrics(&h1));
        let s2 = samples(&metrics(&h2));
        value(&s1, "run_chain_runs_total", "chain=a,result=ok,task=a").unwrap_or(0.0) >= 2.0
            && value(&s2, "run_chain_runs_total", "chain=b,result=ok,task=b").unwrap_or(0.0) >= 2.0
    });
    let m1 = metrics(&h1);
    let m2 = metrics(&h2);
    let m3 = metrics(&h3);
    for (what, m) in [("h1", &m1), ("h2", &m2), ("h3", &m3)] {
        assert_promtool_clean(what, m);
    }
    let (s1, s2, s3) = (samples(&m1), samples(&m2), samples(&m3));
    assert_eq!(
        value(&s1, "run_chain_owner", "chain=a,host=h1"),
        Some(1.0),
        "{m1}"
    );
    assert_eq!(
        value(&s1, "run_chain_owner", "chain=b,host=h2"),
        None,
        "{m1}"
    );
    assert_eq!(
        value(&s1, "run_chain_standby", "chain=b,host=h1"),
        Some(1.0),
        "{m1}"
    );
    assert_eq!(
        value(&s2, "run_chain_owner", "chain=b,host=h2"),
        Some(1.0),
        "{m2}"
    );
    assert_eq!(
        value(&s2, "run_chain_standby", "chain=a,host=h2"),
        Some(1.0),
        "{m2}"
    );
    assert_eq!(
        value(&s1, "run_chain_lease_epoch", "chain=a"),
        Some(ea as f64),
        "{m1}"
    );
    assert_eq!(
        value(&s1, "run_chain_failovers_total", "chain=a"),
        Some(0.0),
        "{m1}"
    );
    assert_eq!(
        value(&s1, "run_chain_fenced_writes_total", "chain=a"),
        Some(0.0),
        "{m1}"
    );
    // Runs only where the chain is owned: no run of b on h1, none of a on h2, nothing on h3.
    let runs_of = |s: &BTreeMap<(String, String), f64>, c: &str| -> f64 {
        s.iter()
            .filter(|((n, l), _)| {
                n == "run_chain_runs_total" && l.starts_with(&format!("chain={c},"))
            })
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(runs_of(&s1, "b"), 0.0, "{m1}");
    assert_eq!(runs_of(&s2, "a"), 0.0, "{m2}");
    assert!(!m3.contains("run_chain_runs_total{"), "{m3}");
    assert!(!m3.contains("run_chain_owner{"), "{m3}");
    assert!(
        runs_of(&s1, "a") >= 2.0 && runs_of(&s2, "b") >= 2.0,
        "{m1}\n{m2}"
    );

    // history and log on h2 (and h3) read the fleet's store: runs of a made on h1, with
    // the host that ran them.
    for env in [&h2, &h3] {
        let out = env.sub(&["history", "a", "--json"]);
        out.assert_code(0);
        let runs: Value = serde_json::from_str(&out.stdout).expect("history --json");
        let runs = runs.as_array().expect("an array");
        assert!(runs.len() >= 2, "{runs:#?}");
        assert!(
            runs.iter().all(|r| r["host"] == "h1" && r["chain"] == "a"),
            "{runs:#?}"
        );
        let done = runs
            .iter()
            .find(|r| r["outcome"] == "ok")
            .expect("a finished run");
        let id = done["run_id"].as_u64().expect("run id").to_string();
        let log = env.sub(&["log", "a", &id]);
        log.assert_code(0);
        assert_eq!(log.stdout, "a\n", "log a {id}: {}", log.stderr);
        let table = env.sub(&["history", "a"]);
        table.assert_code(0);
        assert!(table.stdout.contains("h1"), "{}", table.stdout);
    }
    // status on h3 counts a's runs from the fleet's store.
    let doc = status_json(&h3);
    let a = chain(&doc, "a");
    assert!(a["tasks"][0]["runs"].as_u64().unwrap_or(0) >= 2, "{a:#}");

    // serve --fleet (on h3, which runs nothing): every chain's owner; its runs as recorded.
    let (_serve, addr) = start_serve(&h3, "127.0.0.1", &["--fleet"]);
    let mf = get(addr, "/metrics").text();
    assert_promtool_clean("serve --fleet", &mf);
    let sf = samples(&mf);
    assert_eq!(
        value(&sf, "run_chain_owner", "chain=a,host=h1"),
        Some(1.0),
        "{mf}"
    );
    assert_eq!(
        value(&sf, "run_chain_owner", "chain=b,host=h2"),
        Some(1.0),
        "{mf}"
    );
    assert_eq!(
        value(&sf, "run_chain_standby", "chain=a,host=h2"),
        Some(1.0),
        "{mf}"
    );
    assert_eq!(
        value(&sf, "run_chain_standby", "chain=b,host=h1"),
        Some(1.0),
        "{mf}"
    );
    // Up where a host holds the lease (h3 runs nothing itself).
    for c in ["a", "b"] {
        assert_eq!(
            value(&sf, "run_chain_up", &format!("chain={c}")),
            Some(1.0),
            "{mf}"
        );
    }
    // The whole fleet's runs, from the fleet's store: at least what each owner exported.
    assert!(
        runs_of(&sf, "a") >= runs_of(&s1, "a") && runs_of(&sf, "b") >= runs_of(&s2, "b"),
        "{mf}"
    );
    // Each run once across the hosts' scrapes (h1 + h2 + h3): every chain's runs on its owner only.
    for c in ["a", "b"] {
        let hosts = [runs_of(&s1, c), runs_of(&s2, c), runs_of(&s3, c)];
        assert_eq!(
            hosts.iter().filter(|n| **n > 0.0).count(),
            1,
            "chain {c}'s runs exported by one host only: {hosts:?}"
        );
    }

    // The console on h1 (actions on): chain a has its buttons, chain b (h2's) shows its
    // owner and none.
    let (_serve1, addr1) = start_serve(&h1, "127.0.0.1", &["--allow-actions"]);
    let page_b = get(addr1, "/chain/b");
    assert_eq!(page_b.status, 200, "{}", page_b.text());
    let pb = page_b.text();
    assert!(pb.contains("owner: host h2"), "{pb}");
    assert!(
        pb.contains(&format!("runs on host h2 (epoch {eb})")),
        "{pb}"
    );
    assert!(!pb.contains("/chain/b/kick/confirm"), "{pb}");
    assert!(!pb.contains("/chain/b/stop/confirm"), "{pb}");
    assert!(!pb.contains("/run/confirm"), "{pb}");
    let pa = get(addr1, "/chain/a").text();
    assert!(pa.contains("/chain/a/kick/confirm"), "{pa}");
    assert!(pa.contains("owner, as host h1"), "{pa}");
    let index = get(addr1, "/").text();
    assert!(index.contains("data-chain=\"b\""), "{index}");
    let api = get(addr1, "/api/v1/chains").json();
    assert_eq!(chain(&api, "b")["fleet"]["host"], "h2", "{api:#}");

    for r in [&mut a1, &mut b1, &mut a2, &mut b2] {
        r.signal(libc::SIGTERM);
    }
    for r in [&mut a1, &mut b1, &mut a2, &mut b2] {
        r.assert_exit(0);
    }
}

#[test]
fn status_of_200_chains_over_3_hosts_timed() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("views_many");
    let h1 = host(pg, "h1", &url);
    // One run makes the schema.
    h1.run(&["--once", "a"]).assert_code(0);
    // The fixed cost (connect with SCRAM, the schema check, the reads) with one chain.
    let mut few = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        h1.sub(&["status", "--json"]).assert_code(0);
        few.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    few.sort_by(f64::total_cmp);
    println!(
        "status --json of 1 chain (fleet), debug build, 10 runs: p50 {:.1} ms, max {:.1} ms",
        few[few.len() / 2],
        few[few.len() - 1]
    );
    pg.psql(
        &db,
        "INSERT INTO run_chain.leases (chain, holder, host, epoch, acquired_at, renewed_at, expires_at)
           SELECT 'c' || i, md5(i::text), 'h' || (1 + i % 3), 1, now(), now(), now() + interval '1 hour'
           FROM generate_series(1, 200) i;
         INSERT INTO run_chain.standbys (chain, holder, host, seen_at)
           SELECT 'c' || i, md5(i::text || 's' || k), 'h' || (1 + (i + k) % 3), now() + interval '1 hour'
           FROM generate_series(1, 200) i, generate_series(1, 2) k",
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let out = h1.sub(&["status", "--json"]);
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        out.assert_code(0);
        let doc: Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(doc["chains"].as_array().map(Vec::len), Some(201));
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "status --json of 201 chains (200 leases over 3 hosts, 2 standbys each), debug build, 20 runs: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        p(0.5),
        p(0.95),
        p(1.0)
    );
}

#[test]
fn an_unreachable_or_refusing_store_is_a_clear_error_naming_the_url_without_its_secret() {
    let pg = Pg::shared();
    // Nothing listens on port 1: 70 (the store cannot be read), naming the redacted URL.
    let env = host(pg, "h1", "postgresql://runchain@127.0.0.1:1/nothing");
    for args in [&["status"][..], &["metrics"][..], &["history", "a"][..]] {
        let out = env.sub(args);
        out.assert_code(70);
        assert!(
            out.stderr.contains("cannot read the fleet's store")
                && out.stderr.contains("runchain@127.0.0.1:1/nothing"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // A wrong password: 78, as at a launch; the password is not shown.
    let (_db, url) = pg.fresh_database("views_refused");
    let env = host(pg, "h1", &url);
    std::fs::write(env.path("pw"), "wrong-secret\n").expect("write pw");
    let out = env.sub(&["status"]);
    out.assert_code(78);
    assert!(
        out.stderr.contains("[store]") && !out.stderr.contains("wrong-secret"),
        "{}",
        out.stderr
    );
}

/// `[store]` with a database that does not answer: `status` still shows this host's own
/// chains (RUN_ROOT's records and processes, as without `[store]`), with a warning naming
/// the redacted URL and the error, and exits 70 (the fleet could not be read).
#[test]
fn status_with_the_database_unreachable_shows_this_hosts_chains_with_a_warning() {
    let pg = Pg::shared();
    let env = host(pg, "h1", "postgresql://runchain@127.0.0.1:1/nothing");
    let with_store = std::fs::read_to_string(&env.config).expect("the config");
    // A run recorded in RUN_ROOT (no [store] then), and the [store] back.
    let local = with_store
        .split("[defaults]")
        .nth(1)
        .map(|rest| format!("[defaults]{rest}"))
        .expect("the config has [defaults]");
    env.write_config(&local);
    env.run(&["--once", "a"]).assert_code(0);
    env.write_config(&with_store);
    // Chain b up on this host (it cannot reach the fleet: it waits).
    let mut b = env.spawn(&["b"]);
    wait_until("status shows chain b up", || {
        let out = env.sub(&["status", "--json"]);
        serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|d| {
                d["chains"]
                    .as_array()?
                    .iter()
                    .find(|c| c["chain"] == "b")
                    .map(|c| c["up"] == true)
            })
            .unwrap_or(false)
    });
    let out = env.sub(&["status", "--json"]);
    out.assert_code(70);
    let doc: Value = serde_json::from_str(&out.stdout).expect("status --json");
    let a = chain(&doc, "a");
    assert_eq!(a["up"], false, "{a:#}");
    assert_eq!(a["tasks"][0]["runs"], 1, "{a:#}");
    assert_eq!(a["tasks"][0]["ok"], 1, "{a:#}");
    assert_eq!(chain(&doc, "b")["up"], true, "{doc:#}");
    assert!(
        out.stderr
            .contains("run-chain: warning: cannot read the fleet's store")
            && out.stderr.contains("runchain@127.0.0.1:1/nothing")
            && out.stderr.contains("showing this host's chains only"),
        "{}",
        out.stderr
    );
    let out = env.sub(&["status"]);
    out.assert_code(70);
    assert!(
        out.stdout.contains("a: ") && out.stdout.contains("b: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("warning: cannot read the fleet's store"),
        "{}",
        out.stderr
    );
    b.signal(libc::SIGTERM);
    b.assert_exit(0);
}

/// The rows of `run_chain.runs` read so far in `db` (sequential + through an index).
fn runs_tuples_read(pg: &Pg, db: &str) -> i64 {
    pg.psql(
        db,
        "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables
         WHERE schemaname = 'run_chain' AND relname = 'runs'",
    )
    .trim()
    .parse()
    .expect("tuples read")
}

/// Run `args` on `env` and return how many rows of runs it read (from the statistics the
/// command's backend reports when it ends) and how long it took (ms).
fn rows_read_by(pg: &Pg, db: &str, env: &TestEnv, args: &[&str]) -> (i64, f64) {
    let before = runs_tuples_read(pg, db);
    let t0 = Instant::now();
    let out = env.sub(args);
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    out.assert_code(0);
    let mut read = 0;
    wait_until("the command's backend reported its reads", || {
        read = runs_tuples_read(pg, db) - before;
        read > 0
    });
    (read, ms)
}

/// `history`, `log` and the console's strip over a task with 100,000 runs in PostgreSQL
/// read along the (series, run_id) index: a few rows, not the whole history.
#[test]
fn history_log_and_the_console_strip_walk_the_index_over_100000_runs() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("views_long");
    let h1 = host(pg, "h1", &url);
    h1.run(&["--once", "a"]).assert_code(0);
    pg.psql(
        &db,
        "INSERT INTO run_chain.runs (series, run_id, instance, scheduled_ms, start_ms, stop_ms,
                                     outcome, exit_code, duration_ms, latency_ms, host)
           SELECT s.id, 1 + g, 0, t, t, t + 5, 'ok', 0, 5, 0, 'h1'
           FROM run_chain.series s, generate_series(1, 100000) g,
                LATERAL (SELECT (extract(epoch FROM now()) * 1000)::int8 + g * 1000 AS t) x
           WHERE s.chain = 'a' AND s.task = 'a';
         ANALYZE run_chain.runs",
    );
    let mut figures = Vec::new();
    for args in [
        &["history", "a", "--limit", "20", "--json"][..],
        &["log", "a"][..],
    ] {
        let mut times = Vec::new();
        let mut reads = Vec::new();
        for _ in 0..5 {
            let (read, ms) = rows_read_by(pg, &db, &h1, args);
            reads.push(read);
            times.push(ms);
        }
        times.sort_by(f64::total_cmp);
        let most = reads.iter().copied().max().unwrap_or(0);
        figures.push(format!(
            "{args:?} over 100001 runs, debug build, 5 runs: median {:.1} ms, max {:.1} ms; rows of runs read: at most {most}",
            times[2], times[4]
        ));
        assert!(
            most <= 1000,
            "{args:?} read {most} rows of runs: {figures:?}"
        );
    }
    for f in &figures {
        println!("{f}");
    }
    let out = h1.sub(&["history", "a", "--limit", "3", "--json"]);
    let runs: Value = serde_json::from_str(&out.stdout).expect("history --json");
    let ids: Vec<u64> = runs
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["run_id"].as_u64())
        .collect();
    assert_eq!(ids, [100001, 100000, 99999]);
    // The console's index page (its strip of each chain's newest runs).
    let (_serve, addr) = start_serve(&h1, "127.0.0.1", &[]);
    let before = runs_tuples_read(pg, &db);
    let page = get(addr, "/");
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("100001"), "{}", page.text());
    drop(_serve);
    let mut read = 0;
    wait_until("the console's backend reported its reads", || {
        read = runs_tuples_read(pg, &db) - before;
        read > 0
    });
    println!("the console's index page over 100001 runs: rows of runs read: {read}");
    assert!(read <= 1000, "the console's index read {read} rows of runs");
}

/// How many connections of run-chain's user to `db` the server has authorized so far
/// (log_connections is on: a line per connection, written before it is served).
fn connections(pg: &Pg, db: &str) -> usize {
    let needle = format!("connection authorized: user=runchain database={db}");
    pg.log_text()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

/// One connection per command and per console request, reused by all of its reads;
/// `status` timed (debug build).
#[test]
fn one_connection_per_command_and_per_console_request() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("views_conns");
    let h1 = host(pg, "h1", &url);
    h1.run(&["--once", "a"]).assert_code(0);
    h1.run(&["--once", "b"]).assert_code(0);
    let mut a = h1.spawn(&["a"]);
    wait_stderr(&mut a, "h1 owns a", "a: fleet: owner (epoch ");
    let mut made = Vec::new();
    for args in [
        &["status"][..],
        &["status", "--json"][..],
        &["history", "a"][..],
        &["log", "b"][..],
        &["metrics"][..],
    ] {
        let before = connections(pg, &db);
        h1.sub(args).assert_code(0);
        made.push((format!("{args:?}"), connections(pg, &db) - before));
    }
    let (_serve, addr) = start_serve(&h1, "127.0.0.1", &[]);
    for page in ["/", "/chain/a", "/chain/a/task/a", "/api/v1/chains"] {
        let before = connections(pg, &db);
        let got = get(addr, page);
        assert_eq!(got.status, 200, "{page}: {}", got.text());
        made.push((page.to_string(), connections(pg, &db) - before));
    }
    println!("connections made: {made:?}");
    let mut times = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        h1.sub(&["status"]).assert_code(0);
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "status (2 chains, fleet), debug build, 10 runs: median {:.1} ms, max {:.1} ms",
        times[5], times[9]
    );
    assert!(made.iter().all(|(_, n)| *n == 1), "{made:?}");
    a.signal(libc::SIGTERM);
    a.assert_exit(0);
}

/// The fleet's thread logs a server's NOTICE/WARNING at debug, naming the database (not
/// raw at info, without the chain's name), and a permission error (SQLSTATE 42501) as the
/// database refusing, not as the database unreachable.
#[test]
fn a_server_warning_is_not_logged_raw_and_a_permission_error_is_a_refusal() {
    let pg = Pg::shared();
    let (db, url) = pg.fresh_database("views_words");
    let h1 = host(pg, "h1", &url);
    let h2 = host(pg, "h2", &url);
    let mut cmd = h1.sub_command(&["a"]);
    cmd.env("RUST_LOG", "debug");
    let mut a1 = h1.spawn_command(cmd);
    wait_stderr(&mut a1, "h1 owns a", "a: fleet: owner (epoch ");
    let mut a2 = h2.spawn(&["a"]);
    wait_stderr(
        &mut a2,
        "h2 waits for a",
        "a: fleet: standby: the chain runs on host h1",
    );
    // Every renewal of h1's lease draws a WARNING from the server.
    pg.psql(
        &db,
        "CREATE FUNCTION public.probe() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE WARNING 'readfix-probe'; RETURN NEW; END $$;
         CREATE TRIGGER probe BEFORE UPDATE ON run_chain.leases
           FOR EACH ROW EXECUTE FUNCTION public.probe()",
    );
    wait_stderr(&mut a1, "h1 hears the server's warning", "readfix-probe");
    let said = text(&a1.stderr);
    let lines: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("readfix-probe"))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" debug: ")
                && l.contains("the database says WARNING: readfix-probe")),
        "{lines:#?}"
    );
    // h2 may no longer write its standby row: refused, not unreachable.
    pg.psql(
        &db,
        "REVOKE ALL ON run_chain.standbys FROM PUBLIC, runchain",
    );
    wait_stderr(&mut a2, "h2 is refused", "42501");
    let said = text(&a2.stderr);
    let lines: Vec<&str> = said.lines().filter(|l| l.contains("42501")).collect();
    assert!(
        lines
            .iter()
            .all(|l| l.contains("the database refused: ") && !l.contains("unreachable")),
        "{lines:#?}"
    );
    for r in [&mut a2, &mut a1] {
        r.signal(libc::SIGTERM);
    }
    a2.assert_exit(0);
    a1.assert_exit(0);
}
