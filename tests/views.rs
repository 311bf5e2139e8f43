//! The readers' outputs, exactly, against the real binary: `status --json` and `history
//! --json` key by key (the values that change from run to run masked), the `status` and
//! `history` tables as the JSON's values rendered, and `log`'s raw output and notice.
//! These pin the shapes that the typed views (`src/view/`) must keep.

mod common;

use common::*;
use serde_json::Value;

const CONFIG: &str = r#"
[defaults]
success_cooldown = "0s"
fail_cooldown = "0s"
keep_output = "16"
[tasks.hello]
command = 'echo hello'
[tasks.fails]
command = 'echo failing; exit 3'
[tasks.killed]
command = 'kill -TERM $$'
[tasks.chatty]
command = 'seq 1 100'
"#;

/// A RUN_ROOT with one chain `c`, down, that ran each task once: ok, failed (exit 3),
/// killed by SIGTERM, ok with more output than is kept.
fn env_with_a_chain_run_once() -> TestEnv {
    let env = TestEnv::new(CONFIG);
    env.run(&[
        "--once", "--name", "c", "hello", "fails", "killed", "chatty",
    ])
    .assert_code(1);
    env
}

/// Keys whose values change from run to run (times, durations, host, PIDs, version).
const MASKED: &[&str] = &[
    "config_digest",
    "duration_seconds",
    "host",
    "last_success",
    "latency_seconds",
    "pid",
    "run_root",
    "scheduled",
    "since",
    "start",
    "stop",
    "until",
    "version",
];

/// Pretty JSON with the values of [`MASKED`] keys (when not null) replaced by `<key>`.
fn masked(json: &str) -> String {
    let mut out = String::new();
    for line in json.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let hit = MASKED.iter().find_map(|k| {
            let v = body.strip_prefix(&format!("\"{k}\": "))?;
            let comma = if v.ends_with(',') { "," } else { "" };
            (v.trim_end_matches(',') != "null").then(|| format!("{indent}\"{k}\": <{k}>{comma}"))
        });
        out.push_str(&hit.unwrap_or_else(|| line.to_string()));
        out.push('\n');
    }
    out
}

/// A table's time: "2026-11-24 02:58:01" from "2026-11-24T02:58:01.123Z".
fn short_time(rfc3339: &Value) -> String {
    let s = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {rfc3339}"));
    s[..19].replace('T', " ")
}

/// A duration as run-chain shows one under a minute: "750ms", "4.2s".
fn short_dur(seconds: &Value) -> String {
    let s = seconds
        .as_f64()
        .unwrap_or_else(|| panic!("not seconds: {seconds}"));
    let ms = (s * 1000.0).round() as u64;
    assert!(ms < 60_000, "a test task ran {s}s");
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// "just now" / "42s ago" / "3m 12s ago": how long before `now` (epoch seconds) `at` was.
fn time_ago(now: f64, at: &Value) -> String {
    let at = rfc3339(at.as_str().unwrap_or_else(|| panic!("not a time: {at}"))).unwrap();
    let s = ((now - at).max(0.0) * 1000.0) as u64 / 1000;
    match s {
        0 => "just now".into(),
        1..60 => format!("{s}s ago"),
        _ if s.is_multiple_of(60) => format!("{}m ago", s / 60),
        _ => format!("{}m {}s ago", s / 60, s % 60),
    }
}

#[test]
fn status_json_keeps_its_keys_and_their_order() {
    let env = env_with_a_chain_run_once();
    let out = env.sub(&["status", "--json"]);
    out.assert_code(0);
    let doc = out.json();
    assert_eq!(
        doc["run_root"].as_str(),
        Some(env.run_root.to_str().unwrap()),
        "RUN_ROOT, absolute"
    );
    let task = |name: &str, outcome: &str, exit_code: u8| {
        let failed = outcome != "ok";
        let (failures, ok) = if failed { (1, 0) } else { (0, 1) };
        let last_success = if failed { "null" } else { "<last_success>" };
        let streak = if failed {
            "{\n            \"failures\": 1,\n            \"since\": <since>\n          }"
        } else {
            "null"
        };
        format!(
            r#"        {{
          "failures": {failures},
          "interrupted": 0,
          "last": {{
            "duration_seconds": <duration_seconds>,
            "exit_code": {exit_code},
            "outcome": "{outcome}",
            "run_id": 1,
            "start": <start>,
            "stop": <stop>
          }},
          "last_success": {last_success},
          "ok": {ok},
          "runs": 1,
          "streak": {streak},
          "task": "{name}"
        }}"#
        )
    };
    let tasks = [
        task("chatty", "ok", 0),
        task("fails", "failed", 3),
        task("hello", "ok", 0),
        task("killed", "signal", 143),
    ]
    .join(",\n");
    let want = format!(
        r#"{{
  "chains": [
    {{
      "chain": "c",
      "now": {{
        "group": null,
        "run_id": null,
        "since": null,
        "state": "down",
        "task": null,
        "until": null
      }},
      "pid": null,
      "queued": null,
      "tasks": [
{tasks}
      ],
      "up": false
    }}
  ],
  "run_root": <run_root>
}}
"#
    );
    assert_eq!(masked(&out.stdout), want, "status --json:\n{}", out.stdout);
}

#[test]
fn history_json_keeps_its_keys_and_their_order() {
    let env = env_with_a_chain_run_once();
    let out = env.sub(&["history", "killed", "--json"]);
    out.assert_code(0);
    let want = r#"[
  {
    "chain": "c",
    "duration_seconds": <duration_seconds>,
    "error": null,
    "exit_code": null,
    "host": <host>,
    "instance": {
      "config_digest": <config_digest>,
      "pid": <pid>,
      "version": <version>
    },
    "latency_seconds": <latency_seconds>,
    "outcome": "signal",
    "output_bytes": 0,
    "output_cut": false,
    "run_id": 1,
    "scheduled": <scheduled>,
    "signal": 15,
    "start": <start>,
    "stop": <stop>,
    "task": "killed",
    "trigger": "schedule"
  }
]
"#;
    assert_eq!(masked(&out.stdout), want, "history --json:\n{}", out.stdout);
    let run = &out.json()[0];
    assert_eq!(
        run["instance"]["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

/// The status table shows what the JSON says, in columns, times relative to now.
#[test]
fn the_status_table_renders_the_json() {
    let env = env_with_a_chain_run_once();
    let doc = env.status_json();
    let before = epoch_now();
    let out = env.sub(&["status"]);
    let after = epoch_now();
    out.assert_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", out.stdout);
    assert_eq!(lines[0], "c: down");
    assert_eq!(
        lines[1],
        "  TASK                        RUNS   FAILS  LAST                         LAST SUCCESS         STREAK"
    );
    let chain = chain_entry(&doc, "c").unwrap();
    for (t, line) in chain["tasks"].as_array().unwrap().iter().zip(&lines[2..]) {
        // The time may have moved on a second between the two readings of the clock.
        let row = |now: f64| {
            let last = &t["last"];
            let code = match last["outcome"].as_str().unwrap() {
                "ok" => String::new(),
                "signal" => " (SIGTERM)".into(),
                _ => format!(" ({})", last["exit_code"]),
            };
            let last_s = format!("{}{code} {}", outcome(last), time_ago(now, &last["stop"]));
            let success = match &t["last_success"] {
                Value::Null => "-".to_string(),
                s => time_ago(now, s),
            };
            let streak = match &t["streak"] {
                Value::Null => "-".to_string(),
                s => format!("1 failure since {}", short_time(&s["since"])),
            };
            format!(
                "  {:<24} {:>7} {:>7}  {:<28} {:<20} {streak}",
                t["task"].as_str().unwrap(),
                t["runs"].to_string(),
                t["failures"].to_string(),
                last_s,
                success
            )
        };
        assert!(
            *line == row(before) || *line == row(after),
            "status line:\n{line}\nexpected:\n{}\n(from {t:#})",
            row(after)
        );
    }
}

/// The history table shows what `history --json` says, in columns.
#[test]
fn the_history_table_renders_the_json() {
    let env = env_with_a_chain_run_once();
    let header = "CHAIN                        RUN  START (UTC)           DURATION  OUTCOME                        LATENCY  TRIGGER";
    for (task, shown) in [
        ("hello", "ok"),
        ("fails", "failed (exit 3)"),
        ("killed", "signal (SIGTERM)"),
    ] {
        let runs = env.history(task, &[]);
        let out = env.sub(&["history", task]);
        out.assert_code(0);
        let r = &runs[0];
        let want = format!(
            "{header}\n{:<24} {:>7}  {:<19}  {:>9}  {:<28} {:>9}  schedule\n",
            "c",
            1,
            short_time(&r["start"]),
            short_dur(&r["duration_seconds"]),
            shown,
            short_dur(&r["latency_seconds"])
        );
        assert_eq!(out.stdout, want, "history {task}, from {r:#}");
    }
}

/// `log` writes the kept output raw; a cut one says on stderr how much of how much.
#[test]
fn log_writes_the_kept_output_raw() {
    let env = env_with_a_chain_run_once();
    let out = env.sub(&["log", "fails"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "failing\n");
    assert_eq!(out.stderr, "");
    let out = env.sub(&["log", "chatty", "1", "--chain", "c"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "96\n97\n98\n99\n100\n");
    assert_eq!(
        out.stderr,
        "run-chain: showing the last 16 of 292 bytes of chatty run 1 (chain c)\n"
    );
    let out = env.sub(&["log", "killed", "2"]);
    out.assert_code(64);
    assert_eq!(
        out.stderr,
        "run-chain: error: no run 2 of task \"killed\" is recorded\n"
    );
}
