//! Behaviour found in a review as a new user would meet it: the looking commands keep
//! working when a deploy has just broken the config, `status --json` keeps one shape in
//! every state, an ambiguous `log` asks for `--chain`, and a RUN_ROOT that does not exist
//! yet has no chains.

mod common;

use common::*;

const QUIET: &str = r#"
[defaults]
success_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_NAME $RUN_CHAIN_RUN_ID"'
"#;

#[test]
fn status_json_has_every_key_of_now_in_every_state() {
    let env = TestEnv::new(QUIET);
    let mut runner = env.spawn(&["a"]);
    env.wait_running(&mut runner, "a");
    let entry = env.wait_chain_status("a", "the chain cools down", |c| {
        c["now"]["state"] == "cooldown"
    });
    let keys = ["state", "task", "run_id", "since", "until", "group"];
    for k in keys {
        assert!(
            entry["now"].get(k).is_some(),
            "cooldown lacks {k}: {entry:#}"
        );
    }
    assert_eq!(entry["now"]["task"], "a");
    assert!(entry["now"]["until"].is_string());
    assert!(entry["now"]["group"].is_null());
    runner.signal(libc::SIGTERM);
    runner.assert_exit(0);
    let entry = env.wait_chain_status("a", "the chain is down", |c| c["now"]["state"] == "down");
    for k in keys {
        assert!(entry["now"].get(k).is_some(), "down lacks {k}: {entry:#}");
    }
    assert_eq!(entry["up"], false);
    assert!(entry["pid"].is_null());
}

#[test]
fn looking_commands_work_when_the_config_was_just_broken() {
    let env = TestEnv::new("");
    // RUN_ROOT comes from the config file only, as in production.
    let config = format!("run_root = \"rr\"\n{QUIET}");
    env.write_config(&config);
    let cfg = env.path("tasks.toml");
    let mut cmd = env.bare_command();
    cmd.arg("-c").arg(&cfg).arg("a");
    let mut runner = env.spawn_command(cmd);
    let pidfile = env.path("rr/a.pid");
    wait_until("the chain holds its lock", || {
        lock_holders(&pidfile).contains(&runner.pid)
    });
    env.write_config(&format!("{config}\nbogus_key = 1\n"));

    let mut status = env.bare_command();
    status.arg("-c").arg(&cfg).args(["status", "--json"]);
    let out = env.finish_command(status);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    let chain = chain_entry(&doc, "a").expect("chain a in status");
    assert_eq!(chain["up"], true, "{doc:#}");
    assert!(
        out.stderr.contains("bogus_key"),
        "the config error is still reported: {}",
        out.stderr
    );

    let mut stop = env.bare_command();
    stop.arg("-c").arg(&cfg).args(["stop", "a"]);
    env.finish_command(stop).assert_code(0);
    runner.assert_exit(0);

    // A launch with that config is still refused.
    let mut launch = env.bare_command();
    launch.arg("-c").arg(&cfg).arg("a");
    env.finish_command(launch).assert_code(78);
}

#[test]
fn log_of_a_run_id_in_several_chains_asks_for_the_chain() {
    let env = TestEnv::new(QUIET);
    env.run(&["--once", "--name", "one", "a"]).assert_code(0);
    env.run(&["--once", "--name", "two", "a"]).assert_code(0);
    let out = env.run(&["log", "a", "1"]);
    out.assert_code(64);
    assert!(out.stderr.contains("--chain"), "{}", out.stderr);
    let out = env.run(&["log", "a", "1", "--chain", "two"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "a two 1\n");
    // Without a run id, the latest run of any chain.
    let out = env.run(&["log", "a"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "a two 1\n");
}

#[test]
fn status_of_a_run_root_that_does_not_exist_yet_lists_no_chains() {
    let env = TestEnv::new(QUIET);
    let out = env.run(&["status", "--json"]);
    out.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(doc["chains"], serde_json::json!([]));
    let out = env.run(&["status"]);
    out.assert_code(0);
    assert!(out.stdout.contains("no chains"), "{}", out.stdout);
}
