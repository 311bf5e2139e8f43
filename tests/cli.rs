//! The command line as a user meets it, against the real binary: the help of every command
//! (a line for every option and argument, the defaults the code uses), the two forms of the
//! top-level usage and its examples; the names of coming commands reserved as task names;
//! what `stop`/`kick` say of a chain RUN_ROOT does not hold; `check`'s refusal of a config
//! without tasks and its aligned report in the config's own forms; `status`'s LAST and LAST
//! SUCCESS written alike.

mod common;

use clap::Parser;
use common::*;
use run_chain::cli::Cli;

const TWO_TASKS: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"

[tasks.a]
command = 'echo a >> "$T/out"'

[tasks.b]
command = 'echo b >> "$T/out"'
"#;

/// The help text of `args`, which must exit 0 with it on stdout.
fn help(env: &TestEnv, args: &[&str]) -> String {
    let done = env.sub(args);
    done.assert_code(0);
    assert!(
        done.stdout.contains("Usage:"),
        "{args:?} printed no help:\n{}",
        done.stdout
    );
    done.stdout
}

/// The entries of the `Options:`, `Arguments:` and other `...options...:` sections of a help
/// text, each as (the flag or argument, its description).
fn entries(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_list = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_list =
                line.ends_with(':') && (line.contains("ptions") || line.starts_with("Arguments"));
            continue;
        }
        if !in_list {
            continue;
        }
        let t = line.trim();
        if !(t.starts_with('-') || t.starts_with('<') || t.starts_with('[')) {
            continue; // a description wrapped onto its own line
        }
        // The flag column ends at the first run of two spaces.
        let (flag, desc) = t.split_once("  ").unwrap_or((t, ""));
        out.push((flag.to_string(), desc.trim().to_string()));
    }
    out
}

/// Every subcommand's help, both as `run-chain help X` and `run-chain X --help`, has a line
/// with a description for each of its options and arguments, and shows the defaults the code
/// uses. Before: `history`'s TASK, --chain, --limit and --json, `log`'s TASK, RUN_ID and
/// --chain, `stop`'s and `kick`'s CHAIN, `status --json` and `exporter --listen` had none.
#[test]
fn every_option_and_argument_of_every_command_has_a_help_line() {
    let env = TestEnv::new(TWO_TASKS);
    // (command, what its help must list, each with a description)
    let expected: &[(&str, &[&str])] = &[
        ("check", &[]),
        ("status", &["--json"]),
        (
            "history",
            &["<TASK>", "--chain <CHAIN>", "--limit <N>", "--json"],
        ),
        ("log", &["<TASK>", "[RUN_ID]", "--chain <CHAIN>"]),
        ("stop", &["<CHAIN>", "--now"]),
        ("kick", &["<CHAIN>"]),
        ("metrics", &[]),
        ("exporter", &["--listen <ADDR>"]),
        ("mail-test", &[]),
    ];
    for (cmd, wanted) in expected {
        for args in [&["help", cmd][..], &[cmd, "--help"], &[cmd, "-h"]] {
            let text = help(&env, args);
            let found = entries(&text);
            for (flag, desc) in &found {
                assert!(
                    !desc.is_empty(),
                    "{args:?}: {flag} has no description:\n{text}"
                );
            }
            for w in wanted
                .iter()
                .chain(&["--config <FILE>", "--run-root <DIR>"])
            {
                assert!(
                    found.iter().any(|(f, _)| f.ends_with(w)),
                    "{args:?}: no line for {w}:\n{text}"
                );
            }
        }
    }
    let history = help(&env, &["help", "history"]);
    assert!(
        history
            .lines()
            .any(|l| l.contains("--limit") && l.contains("[default: 20]")),
        "history's help does not give --limit's default:\n{history}"
    );
    let exporter = help(&env, &["exporter", "--help"]);
    assert!(
        exporter
            .lines()
            .any(|l| l.contains("--listen") && l.contains("[default: 127.0.0.1:9464]")),
        "exporter's help does not give --listen's default:\n{exporter}"
    );
    // The top level too: its options and its TASK argument.
    let top = help(&env, &["--help"]);
    let found = entries(&top);
    for w in [
        "--name <CHAIN>",
        "--no-kill-concurrent",
        "--once",
        "[TASK]...",
    ] {
        assert!(
            found.iter().any(|(f, d)| f.ends_with(w) && !d.is_empty()),
            "--help: no described line for {w}:\n{top}"
        );
    }
}

/// `history` without `--limit` lists the 20 newest runs, as its help says. (The exporter's
/// default address is checked in tests/metrics.rs, in a network namespace of its own.)
#[test]
fn history_lists_20_runs_unless_told_otherwise() {
    let env = TestEnv::new("[tasks.a]\ncommand = 'true'\nsuccess_cooldown = \"0s\"\n");
    let mut chain = env.spawn(&["a"]);
    env.wait_history("a", &["--limit", "100"], "21 runs are recorded", |r| {
        r.iter().filter(|r| outcome(r) == "ok").count() >= 21
    });
    env.sub(&["stop", "a"]).assert_code(0);
    chain.assert_exit(0);
    assert_eq!(env.history("a", &[]).len(), 20);
    assert_eq!(env.history("a", &["--limit", "21"]).len(), 21);
}

/// The usage shows the two forms, not `[TASK]... <COMMAND>` (tasks, then a subcommand: an
/// error), and the help ends with three or four examples, each a command line run-chain
/// accepts.
#[test]
fn the_usage_shows_two_forms_and_the_help_ends_with_examples() {
    let env = TestEnv::new(TWO_TASKS);
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let text = help(&env, args);
        assert!(
            text.contains("Usage: run-chain [OPTIONS] TASK...\n"),
            "{args:?}: no run form:\n{text}"
        );
        assert!(
            text.contains("\n       run-chain COMMAND "),
            "{args:?}: no command form:\n{text}"
        );
        assert!(
            !text.contains("<COMMAND>") && !text.contains("[TASK]... <"),
            "{args:?}: the old usage is still there:\n{text}"
        );
        let (_, examples) = text
            .split_once("\nExamples:\n")
            .unwrap_or_else(|| panic!("{args:?}: no examples:\n{text}"));
        let lines: Vec<&str> = examples
            .lines()
            .filter(|l| l.starts_with("  run-chain "))
            .collect();
        assert!(
            (3..=4).contains(&lines.len()),
            "{args:?}: {} examples:\n{text}",
            lines.len()
        );
        assert!(
            examples
                .lines()
                .all(|l| l.is_empty() || l.starts_with("  ")),
            "{args:?}: the examples are not the end of the help:\n{text}"
        );
        for l in lines {
            let argv: Vec<&str> = l.split_whitespace().filter(|w| *w != "&").collect();
            assert!(
                Cli::try_parse_from(&argv).is_ok(),
                "{args:?}: example {l:?} is not a valid command line"
            );
        }
    }
    // A usage error shows the same usage.
    let done = env.sub(&["--no-such-flag"]);
    done.assert_code(64);
    assert!(
        done.stderr.contains("run-chain [OPTIONS] TASK...") && !done.stderr.contains("<COMMAND>"),
        "{}",
        done.stderr
    );
}

/// `serve`, `run-now` and `store` are names a task may not take (`serve` and `run-now` are commands
/// of this version, `store` one of a coming version), or a chain launched as `run-chain serve`
/// would start the web console after an upgrade. `check` and a launch refuse such a config with 78, naming the file and the key and
/// saying to rename the task; nothing runs. Before: accepted, and the launch ran the task.
#[test]
fn the_names_of_coming_commands_are_refused_as_task_names() {
    for name in ["serve", "run-now", "store"] {
        let config = format!(
            "[tasks.a]\ncommand = 'echo a >> \"$T/out\"'\n[tasks.{name}]\ncommand = 'echo {name} >> \"$T/out\"'\n"
        );
        let env = TestEnv::new(&config);
        let file = env.config.display().to_string();
        let key = format!("tasks.{name}");
        for args in [
            &["check"][..],
            &["--once", name],
            &["--once", "a", name],
            &["--once", "a"],
        ] {
            if args.contains(&"run-now") || args.contains(&"serve") || args.contains(&"store") {
                // A command now, which no task list may name: a usage error, as for `kick`.
                env.run(args).assert_code(64);
                assert_eq!(env.read("out"), "", "{args:?}: a task ran");
                continue;
            }
            let done = env.run(args);
            done.assert_code(78);
            assert!(
                done.stderr.contains(&file)
                    && done.stderr.contains(&key)
                    && done.stderr.contains("reserved")
                    && done.stderr.contains("rename the task"),
                "{args:?}: the error must name {file}, {key} and say to rename the task:\n{}",
                done.stderr
            );
            assert_eq!(env.read("out"), "", "{args:?}: a task ran");
            assert!(!env.run_root.exists(), "{args:?}: RUN_ROOT created");
        }
    }
    // Without such a task, `run-chain store` is a command this version does not have: 64.
    // (`serve` and `run-now` are commands now: `--once serve` is a run option given to one, 64 as well.)
    let env = TestEnv::new(TWO_TASKS);
    env.run(&["--once", "serve"]).assert_code(64);
    env.run(&["--once", "run-now"]).assert_code(64);
    env.run(&["--once", "store"]).assert_code(64);
    assert_eq!(env.read("out"), "");
    assert!(!env.run_root.exists());
}

/// `stop` and `kick` given a chain that RUN_ROOT does not hold (a task's name, a typo) exit 64
/// and list the chains there, and the chains a task of that name is in; or say there are none.
/// Before: "no chain named ... (no .../x.pid found)", nothing more.
#[test]
fn stop_and_kick_of_an_unknown_chain_list_the_chains_there() {
    let env = TestEnv::new("[tasks.a]\ncommand = 'true'\n[tasks.b]\ncommand = 'true'\n[defaults]\nsuccess_cooldown = \"0s\"\n");
    for args in [&["stop", "a"][..], &["kick", "nosuch"]] {
        let done = env.sub(args);
        done.assert_code(64);
        assert!(
            done.stderr.contains("no chain has run there"),
            "{args:?}: {}",
            done.stderr
        );
    }
    env.run(&["--once", "a", "b"]).assert_code(0);
    env.run(&["--once", "--name", "just-b", "b"]).assert_code(0);
    for cmd in ["stop", "kick"] {
        let done = env.sub(&[cmd, "a"]);
        done.assert_code(64);
        assert!(
            done.stderr.contains("the chains there: a_b, just-b")
                && done.stderr.contains("a is a task of chain a_b"),
            "{cmd} a: {}",
            done.stderr
        );
        let done = env.sub(&[cmd, "b"]);
        done.assert_code(64);
        assert!(
            done.stderr.contains("b is a task of chains a_b, just-b"),
            "{cmd} b: {}",
            done.stderr
        );
        let done = env.sub(&[cmd, "nosuch"]);
        done.assert_code(64);
        assert!(
            done.stderr.contains("no chain named \"nosuch\"")
                && done.stderr.contains("the chains there: a_b, just-b")
                && !done.stderr.contains("is a task of"),
            "{cmd} nosuch: {}",
            done.stderr
        );
    }
}

/// `check` of a config that defines no task: 78, naming the file, saying no task is defined.
/// Before: exit 0, with nothing but the file's name and RUN_ROOT printed.
#[test]
fn check_of_a_config_without_tasks_exits_78() {
    for config in [
        "",
        "[defaults]\nsuccess_cooldown = \"1m\"\n",
        "[email]\nto = [\"a@b\"]\n",
    ] {
        let env = TestEnv::new(config);
        let done = env.sub(&["check"]);
        done.assert_code(78);
        assert!(
            done.stderr.contains(&env.config.display().to_string())
                && done.stderr.contains("no task is defined")
                && done.stderr.contains("[tasks.NAME]"),
            "{config:?}: {}",
            done.stderr
        );
        assert!(!env.run_root.exists());
    }
}

/// `check` prints the resolved config aligned, every `=` in one column, its values as the
/// config writes them: "15m", "64KiB", `tls = "opportunistic"`. Before: `tls Opportunistic`,
/// `keep_output = 65536 bytes`, `=` in several columns.
#[test]
fn check_prints_an_aligned_report_in_the_configs_own_forms() {
    let env = TestEnv::new(
        r#"
[defaults]
success_cooldown = "15m"
non_recoverable_downtime = "1h 30m"
[email]
to = ["admin@example.com"]
smtp = "smtp://127.0.0.1:25"
[tasks.send_mail]
command = "python manage.py send_mail"
env = { DJANGO_SETTINGS_MODULE = "example.settings" }
keep_output = "64KiB"
[tasks.other]
argv = ["true"]
keep_output = "1MiB"
"#,
    );
    let done = env.sub(&["check"]);
    done.assert_code(0);
    let text = &done.stdout;
    let mut columns = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let at = line
            .find(" = ")
            .unwrap_or_else(|| panic!("{line:?} is no `key = value`:\n{text}"));
        columns.insert(at);
    }
    assert_eq!(columns.len(), 1, "not aligned:\n{text}");
    let value = |section: &str, key: &str| -> String {
        let body = text
            .split(&format!("\n[{section}]\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no [{section}]:\n{text}"));
        body.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (k, v) = l.split_once(" = ")?;
                (k.trim() == key).then(|| v.to_string())
            })
            .unwrap_or_else(|| panic!("no {key} in [{section}]:\n{text}"))
    };
    assert_eq!(value("email", "tls"), "\"opportunistic\"");
    assert_eq!(value("tasks.send_mail", "success_cooldown"), "\"15m\"");
    assert_eq!(value("tasks.send_mail", "fail_cooldown"), "\"30m\"");
    assert_eq!(
        value("tasks.send_mail", "non_recoverable_downtime"),
        "\"1h 30m\""
    );
    assert_eq!(value("tasks.send_mail", "keep_output"), "\"64KiB\"");
    assert_eq!(value("tasks.other", "keep_output"), "\"1MiB\"");
    assert_eq!(value("tasks.send_mail", "timeout"), "\"none\"");
    assert_eq!(
        value("tasks.send_mail", "env.DJANGO_SETTINGS_MODULE"),
        "\"example.settings\""
    );
    assert!(
        !text.contains("Opportunistic") && !text.contains("bytes"),
        "{text}"
    );
}

/// `status` writes LAST (the last run's outcome and when it ended) and LAST SUCCESS in one
/// form, how long ago: "ok 3m ago", "3m ago". Before: LAST showed a time of day ("ok (0)
/// 14:02:11"), LAST SUCCESS a date and time ("2026-12-07 14:02:11").
#[test]
fn status_writes_last_and_last_success_alike() {
    let env = TestEnv::new("[tasks.ok]\ncommand = 'true'\n[tasks.bad]\ncommand = 'exit 3'\n");
    env.run(&["--once", "ok"]).assert_code(0);
    env.run(&["--once", "bad"]).assert_code(1);
    let done = env.sub(&["status"]);
    done.assert_code(0);
    let text = &done.stdout;
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with("TASK"))
        .unwrap_or_else(|| panic!("no table header:\n{text}"));
    let last_at = header.find("LAST ").expect("LAST");
    let success_at = header.find("LAST SUCCESS").expect("LAST SUCCESS");
    let streak_at = header.find("STREAK").expect("STREAK");
    let row = |task: &str| -> (String, String) {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(task))
            .unwrap_or_else(|| panic!("no row for {task}:\n{text}"));
        let cell = |from: usize, to: usize| {
            line.get(from..to.min(line.len()))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        (cell(last_at, success_at), cell(success_at, streak_at))
    };
    // "just now", "42s ago", "3m 12s ago", "2h ago", ...
    let is_ago = |s: &str| {
        s == "just now"
            || s.strip_suffix(" ago").is_some_and(|t| {
                t.split(' ').all(|p| {
                    let (n, unit) = p.split_at(p.len().saturating_sub(1));
                    !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())
                        && ["s", "m", "h", "d"].contains(&unit)
                })
            })
    };
    let when = |last: &str, outcome: &str| -> String {
        last.strip_prefix(outcome)
            .unwrap_or_else(|| panic!("LAST {last:?} does not start with {outcome:?}:\n{text}"))
            .trim()
            .to_string()
    };
    let (last, success) = row("ok");
    let last_when = when(&last, "ok");
    assert!(is_ago(&last_when), "LAST {last:?}:\n{text}");
    assert!(is_ago(&success), "LAST SUCCESS {success:?}:\n{text}");
    let (last, success) = row("bad");
    assert!(is_ago(&when(&last, "failed (3)")), "LAST {last:?}:\n{text}");
    assert_eq!(success, "-", "{text}");
}
