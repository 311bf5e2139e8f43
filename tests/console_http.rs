//! `run-chain serve` over raw HTTP: the pages and the JSON API of real chains and a real
//! store, and the safety checks (issue 19, "Safe by default"): the Host check (421, and
//! `/metrics` exempt), the security headers, actions (POST only, token, same origin, off
//! unless `--allow-actions`), the secret off loopback, hostile task output.

mod common;
mod console_support;

use common::*;
use console_support::*;
use std::net::SocketAddr;

/// A chain whose first task prints a line every 0.2 s for a while, then a quick one.
const LIVE: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
[tasks.slow]
command = 'i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); sleep 0.2; done'
[tasks.quick]
command = 'echo quick >> "$T/quick"'
[tasks.tick]
command = 'echo tick'
success_cooldown = "0s"
[tasks.hostile]
command = 'printf "</pre><script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">\033[31mred\033[0m \033]8;;http://evil.example/\033\\link\033]8;;\033\\ bad:\377\376 nul:\000 end\n"'
"#;

fn host_of(addr: SocketAddr) -> String {
    addr.to_string()
}

/// Waits until chain `chain` runs task `task`; returns the run id.
fn wait_running_task(env: &TestEnv, chain: &str, task: &str) -> u64 {
    let mut id = 0;
    env.wait_chain_status(chain, &format!("{chain} runs {task}"), |c| {
        let now = &c["now"];
        if now["state"] == "running" && now["task"] == task {
            id = now["run_id"].as_u64().unwrap_or(0);
        }
        id > 0
    });
    id
}

#[test]
fn pages_and_api_of_a_running_chain() {
    let env = TestEnv::new(LIVE);
    let mut chain = env.spawn(&["slow", "quick"]);
    env.wait_running(&mut chain, "slow_quick");
    let id = wait_running_task(&env, "slow_quick", "slow");
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &[]);
    wait_until("the first line of the output is in the store", || {
        get(addr, &format!("/api/v1/runs/slow_quick/slow/{id}")).json()["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("line 0\n"))
    });

    let index = get(addr, "/");
    assert_eq!(index.status, 200, "{}", index.text());
    index.assert_security_headers("/");
    assert_eq!(
        index.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let t = index.text();
    assert!(
        t.contains("href=\"/chain/slow_quick\"")
            && t.contains("running <b>slow</b>")
            && t.contains("read-only"),
        "{t}"
    );

    let page = get(addr, "/chain/slow_quick");
    assert_eq!(page.status, 200);
    page.assert_security_headers("/chain/C");
    let t = page.text();
    assert!(
        t.contains(&format!("data-src=\"/api/v1/runs/slow_quick/slow/{id}\""))
            && t.contains("line 0"),
        "{t}"
    );
    assert!(!t.contains("kick/confirm"), "actions are off: {t}");

    // The output from a byte offset grows while the run goes on.
    let first = get(addr, &format!("/api/v1/runs/slow_quick/slow/{id}"));
    assert_eq!(first.status, 200);
    first.assert_security_headers("API run");
    let first = first.json();
    assert_eq!(first["running"], true);
    assert_eq!(first["run"]["outcome"], "running");
    assert_eq!(first["output_from"], 0);
    let to = first["output_to"].as_u64().unwrap();
    assert!(first["output"].as_str().unwrap().starts_with("line 0\n"));
    wait_until("the output grows past the first offset", || {
        let next = get(
            addr,
            &format!("/api/v1/runs/slow_quick/slow/{id}?from={to}"),
        )
        .json();
        next["output_from"] == to
            && next["output_to"].as_u64().unwrap() > to
            && next["output"].as_str().unwrap().starts_with("line ")
    });

    // /api/v1/chains: the shape of `status --json`.
    let api = get(addr, "/api/v1/chains").json();
    let cli = env.status_json();
    assert_eq!(api["run_root"], cli["run_root"]);
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["chains"][0]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(keys(&api), keys(&cli));
    assert_eq!(api["chains"][0]["chain"], "slow_quick");

    // The pages of the task and the run, and the raw output.
    let task = get(addr, "/chain/slow_quick/task/slow");
    assert_eq!(task.status, 200);
    assert!(task
        .text()
        .contains(&format!("href=\"/run/slow_quick/slow/{id}\"")));
    let run = get(addr, &format!("/run/slow_quick/slow/{id}"));
    assert_eq!(run.status, 200);
    run.assert_security_headers("/run");
    assert!(run.text().contains("line 0\n"));
    let txt = get(addr, &format!("/run/slow_quick/slow/{id}/output.txt"));
    assert_eq!(txt.status, 200);
    assert_eq!(
        txt.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(txt.text().starts_with("line 0\nline 1\n"));
    txt.assert_security_headers("output.txt");

    // The static files, and what is not there.
    let css = get(addr, "/static/console.css");
    assert_eq!(
        (css.status, css.header("Content-Type")),
        (200, Some("text/css; charset=utf-8"))
    );
    let js = get(addr, "/static/console.js");
    assert_eq!(js.status, 200);
    assert!(js.text().contains("textContent") && !js.text().contains("innerHTML"));
    for path in [
        "/chain/nosuch",
        "/chain/slow_quick/task/nosuch",
        "/run/slow_quick/slow/99999",
        "/run/slow_quick/slow/x",
        "/chain/..%2f..%2fetc",
        "/nope",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        r.assert_security_headers(path);
    }
    let r = get(addr, "/api/v1/runs/slow_quick/slow/99999");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = get(addr, "/chain/slow_quick/task/slow?before=abc");
    assert_eq!(r.status, 400);
    // A page is GET (or HEAD) only.
    let host = host_of(addr);
    let r = request(
        addr,
        "POST",
        "/chain/slow_quick",
        &[("Host", &host)],
        b"x=1",
    )
    .unwrap();
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
    let r = request(addr, "HEAD", "/", &[("Host", &host)], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    r.assert_security_headers("HEAD /");
}

/// History is paged by run id (`before`): the pages, put end to end, are `history --json`.
#[test]
fn history_is_paged_by_run_id() {
    let env = TestEnv::new(LIVE);
    let mut chain = env.spawn(&["--name", "ticks", "tick"]);
    env.wait_running(&mut chain, "ticks");
    env.wait_history(
        "tick",
        &["--chain", "ticks", "--limit", "100"],
        "55 runs of tick",
        |runs| runs.iter().filter(|r| outcome(r) == "ok").count() >= 55,
    );
    chain.signal(libc::SIGTERM);
    chain.assert_exit(0);
    let all: Vec<u64> = env
        .history("tick", &["--chain", "ticks", "--limit", "7"])
        .iter()
        .map(run_id)
        .collect();
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &[]);
    let mut paged = Vec::new();
    let mut before = String::new();
    while paged.len() < 7 {
        let page = get(
            addr,
            &format!("/api/v1/chains/ticks/tasks/tick/runs?limit=3{before}"),
        );
        assert_eq!(page.status, 200, "{}", page.text());
        let ids: Vec<u64> = page.json().as_array().unwrap().iter().map(run_id).collect();
        assert!(!ids.is_empty() && ids.len() <= 3, "{ids:?}");
        before = format!("&before={}", ids.last().unwrap());
        paged.extend(ids);
    }
    paged.truncate(7);
    assert_eq!(paged, all);
    // The shape of `history --json`: the same keys.
    let api = get(addr, "/api/v1/chains/ticks/tasks/tick/runs?limit=1").json();
    let cli = env.history("tick", &["--chain", "ticks", "--limit", "1"]);
    assert_eq!(api[0], cli[0]);
    // The page of the task links to the next older page by run id.
    // The page of the task shows 50 runs and links to the older ones by run id.
    let newest = all[0];
    let t = get(addr, "/chain/ticks/task/tick").text();
    let next = format!(
        "rel=\"next\" href=\"/chain/ticks/task/tick?before={}\"",
        newest - 49
    );
    assert!(t.contains(&next), "{next} not in {t}");
    assert_eq!(t.matches("<tr><td><a href=\"/run/ticks/tick/").count(), 50);
    let older = get(
        addr,
        &format!("/chain/ticks/task/tick?before={}", newest - 49),
    )
    .text();
    assert!(older.contains(&format!("href=\"/run/ticks/tick/{}\"", newest - 50)));
    assert!(!older.contains(&format!("href=\"/run/ticks/tick/{}\"", newest - 49)));
    assert!(older.contains("« newest"));
    let failed = get(addr, "/chain/ticks/task/tick?outcome=failed").text();
    assert!(failed.contains("No runs."), "{failed}");
    let r = get(addr, "/api/v1/chains/ticks/tasks/nosuch/runs");
    assert_eq!(r.status, 404);
}

#[test]
fn a_host_that_does_not_name_the_server_is_421_but_metrics_are_served() {
    let env = TestEnv::new(LIVE);
    env.run(&["--once", "quick"]).assert_code(0);
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-host", "console.example"]);
    let port = addr.port().to_string();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        "localhost:1".to_string(),
        "127.0.0.1".to_string(),
    ] {
        for path in ["/", "/api/v1/chains", "/chain/quick", "/static/console.js"] {
            let r = request(addr, "GET", path, &[("Host", &host)], b"").unwrap();
            assert_eq!(r.status, 421, "Host {host} {path}: {}", r.text());
            r.assert_security_headers("421");
        }
        let r = request(
            addr,
            "POST",
            "/chain/quick/kick",
            &[("Host", &host)],
            b"token=x",
        )
        .unwrap();
        assert_eq!(r.status, 421, "Host {host} POST");
        let m = request(addr, "GET", "/metrics", &[("Host", &host)], b"").unwrap();
        assert_eq!(m.status, 200, "Host {host} /metrics");
        assert!(m.text().contains("run_chain_runs_total"));
    }
    // No Host at all (HTTP/1.0 allows it): 421 too.
    assert_eq!(request(addr, "GET", "/", &[], b"").unwrap().status, 421);
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "console.example".to_string(),
    ] {
        let r = request(addr, "GET", "/", &[("Host", &host)], b"").unwrap();
        assert_eq!(r.status, 200, "Host {host}");
    }
}

#[test]
fn actions_need_post_the_token_and_the_same_origin_and_a_kick_ends_the_cooldown() {
    let env = TestEnv::new(LIVE);
    let mut chain = env.spawn(&["--name", "q", "quick"]);
    env.wait_running(&mut chain, "q");
    env.wait_lines("quick", 1);
    env.wait_chain_status("q", "q cools down", |c| c["now"]["state"] == "cooldown");
    let (serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-actions"]);
    let host = host_of(addr);
    let origin = format!("http://{host}");
    let token = action_token(addr, "q", "kick");
    assert_eq!(token.len(), 32, "{token}");

    // GET on an action: 405, Allow: POST.
    for a in ["kick", "stop"] {
        let r = get(addr, &format!("/chain/q/{a}"));
        assert_eq!(r.status, 405);
        assert_eq!(r.header("Allow"), Some("POST"));
        r.assert_security_headers("405");
    }
    let post = |headers: &[(&str, &str)], body: &str| {
        let mut all = vec![
            ("Host", host.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        all.extend_from_slice(headers);
        request(addr, "POST", "/chain/q/kick", &all, body.as_bytes()).unwrap()
    };
    let good = format!("token={token}");
    for (headers, body, what) in [
        (vec![], "", "no token"),
        (
            vec![],
            "token=0123456789abcdef0123456789abcdef",
            "a wrong token",
        ),
        (
            vec![("Origin", "http://evil.example")],
            good.as_str(),
            "a cross-site Origin",
        ),
        (vec![("Origin", "null")], good.as_str(), "Origin: null"),
        (
            vec![("Origin", "http://127.0.0.1:1")],
            good.as_str(),
            "another port's Origin",
        ),
        (
            vec![("Sec-Fetch-Site", "cross-site")],
            good.as_str(),
            "Sec-Fetch-Site: cross-site",
        ),
        (
            vec![("Sec-Fetch-Site", "same-site")],
            good.as_str(),
            "Sec-Fetch-Site: same-site",
        ),
    ] {
        let r = post(&headers, body);
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        r.assert_security_headers(what);
    }
    assert_eq!(env.lines("quick").len(), 1, "a refused kick ran the task");

    // The same request as the confirmation form sends it: 303 to the chain, and the task
    // runs again at once (its cooldown is an hour).
    let r = post(
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
        &good,
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("Location"), Some("/chain/q"));
    env.wait_lines("quick", 2);
    wait_until("the kick is logged with its source", || {
        serve
            .stderr()
            .contains("console: kick of chain q asked by 127.0.0.1:")
    });

    // Stop: 303, and the chain exits.
    let r = request(
        addr,
        "POST",
        "/chain/q/stop",
        &[("Host", &host), ("Origin", &origin)],
        good.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 303);
    chain.assert_exit(0);
    assert!(serve
        .stderr()
        .contains("console: stop of chain q asked by 127.0.0.1:"));
}

#[test]
fn without_allow_actions_the_console_is_read_only() {
    let env = TestEnv::new(LIVE);
    let mut chain = env.spawn(&["--name", "q", "quick"]);
    env.wait_running(&mut chain, "q");
    env.wait_lines("quick", 1);
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &[]);
    let host = host_of(addr);
    let confirm = get(addr, "/chain/q/kick/confirm");
    assert_eq!(confirm.status, 403);
    let t = confirm.text();
    assert!(
        t.contains("read-only") && !t.contains("name=\"token\""),
        "{t}"
    );
    // The task printed its line before its run's end is committed by the chain's store
    // writer (a thread of its own): wait for the record, not for the line.
    wait_until("the first run is recorded", || {
        get(addr, "/chain/q")
            .text()
            .contains("Output of the last run")
    });
    let page = get(addr, "/chain/q").text();
    assert!(page.contains("read-only"), "{page}");
    // No task runs: the last run's output is shown, not live.
    assert!(
        page.contains("Output of the last run") && page.contains("href=\"/run/q/quick/1\""),
        "{page}"
    );
    assert!(!page.contains("data-src"), "{page}");
    // No "Run now" either, and its confirmation has no form.
    assert!(!page.contains("/run/confirm"), "{page}");
    assert!(!get(addr, "/chain/q/task/quick")
        .text()
        .contains("/run/confirm"));
    let confirm = get(addr, "/chain/q/task/quick/run/confirm");
    assert_eq!(confirm.status, 403);
    assert!(!confirm.text().contains("name=\"token\""));
    for path in ["/chain/q/kick", "/chain/q/stop", "/chain/q/task/quick/run"] {
        let r = request(
            addr,
            "POST",
            path,
            &[("Host", &host), ("Origin", &format!("http://{host}"))],
            b"token=0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(r.status, 403, "{path}");
        assert!(r.text().contains("read-only"));
    }
    env.assert_running(&mut chain, "q");
    assert_eq!(env.lines("quick").len(), 1);
}

#[test]
fn off_loopback_no_page_without_the_secret() {
    let env = TestEnv::new(LIVE);
    env.run(&["--once", "quick"]).assert_code(0);
    // Refused to start without a secret (64), or with an empty one (78).
    let port = free_port().to_string();
    let done = env.sub(&["serve", "--listen", &format!("0.0.0.0:{port}")]);
    done.assert_code(64);
    assert!(done.stderr.contains("--token-file"), "{}", done.stderr);
    std::fs::write(env.path("empty"), "\n").unwrap();
    let empty = env.path("empty").display().to_string();
    env.sub(&[
        "serve",
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--token-file",
        &empty,
    ])
    .assert_code(78);

    std::fs::write(env.path("secret"), "s3cret-value\n").unwrap();
    let secret = env.path("secret").display().to_string();
    let (_serve, addr) = start_serve(&env, "0.0.0.0", &["--token-file", &secret]);
    let host = host_of(addr);
    for path in [
        "/",
        "/chain/quick",
        "/api/v1/chains",
        "/run/quick/quick/1/output.txt",
    ] {
        let r = request(addr, "GET", path, &[("Host", &host)], b"").unwrap();
        assert_eq!(r.status, 401, "{path}");
        r.assert_security_headers(path);
        assert!(
            !r.text().contains("quick"),
            "{path} shows a chain: {}",
            r.text()
        );
        // "user:wrong"
        let r = request(
            addr,
            "GET",
            path,
            &[("Host", &host), ("Authorization", "Basic dXNlcjp3cm9uZw==")],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 401, "{path} with a wrong secret");
    }
    let r = request(addr, "GET", "/api/v1/chains", &[("Host", &host)], b"").unwrap();
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Basic realm=\"run-chain\"")
    );
    // "user:s3cret-value"
    let basic = "Basic dXNlcjpzM2NyZXQtdmFsdWU=";
    let r = request(
        addr,
        "GET",
        "/",
        &[("Host", &host), ("Authorization", basic)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("href=\"/chain/quick\""));
    // /metrics needs no secret.
    let m = request(
        addr,
        "GET",
        "/metrics",
        &[("Host", "prometheus.example")],
        b"",
    )
    .unwrap();
    assert_eq!(m.status, 200);
    // The login form: a wrong secret 401, the right one a 303 with the session cookie.
    let login = |secret: &str| {
        request(
            addr,
            "POST",
            "/login",
            &[
                ("Host", &host),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            format!("secret={secret}").as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(login("nope").status, 401);
    let ok = login("s3cret-value");
    assert_eq!(ok.status, 303);
    let cookie = ok.header("Set-Cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = request(
        addr,
        "GET",
        "/chain/quick",
        &[("Host", &host), ("Cookie", pair)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let forged = "run_chain_session=00000000000000000000000000000000";
    let r = request(
        addr,
        "GET",
        "/chain/quick",
        &[("Host", &host), ("Cookie", forged)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401);
}

#[test]
fn hostile_output_is_text_in_pages_and_api() {
    let env = TestEnv::new(LIVE);
    env.run(&["--once", "hostile"]).assert_code(0);
    let (_serve, addr) = start_serve(&env, "127.0.0.1", &[]);
    let page = get(addr, "/run/hostile/hostile/1");
    assert_eq!(page.status, 200);
    let t = page.text();
    for bad in ["<script>window", "<img", "\u{1b}", "\0", "evil.example"] {
        assert!(!t.contains(bad), "{bad:?} in the page: {t}");
    }
    assert!(
        t.contains("&lt;/pre&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;red link bad:\u{fffd}\u{fffd} nul: end"),
        "{t}"
    );
    let api = get(addr, "/api/v1/runs/hostile/hostile/1").json();
    let out = api["output"].as_str().unwrap();
    assert_eq!(
        out,
        "</pre><script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">red link bad:\u{fffd}\u{fffd} nul: end\n"
    );
    // output.txt is the output as written, as text/plain that is never sniffed.
    let raw = get(addr, "/run/hostile/hostile/1/output.txt");
    assert!(raw.body.windows(3).any(|w| w == b"\xff\xfe "));
    assert_eq!(raw.header("X-Content-Type-Options"), Some("nosniff"));
}

/// The Host may name the address the connection arrived on, when `serve` listens on every
/// address (0.0.0.0): in a network namespace of the test's own (`unshare --net`, as root),
/// with 192.0.2.10 (TEST-NET-1) on its loopback device, a thread of the test joins it and
/// asks for the pages at that address. Before tiny_http told the console the connection's
/// local address, only loopback names and --allow-host were accepted there.
#[test]
fn the_host_may_name_the_address_the_connection_arrived_on() {
    require_root("unshare --net: a network namespace with an address of the test's own");
    let env = TestEnv::new(LIVE);
    env.run(&["--once", "quick"]).assert_code(0);
    std::fs::write(env.path("secret"), "s3cret-value\n").unwrap();
    let mut cmd = env.command_for("unshare");
    cmd.args([
        "--net",
        "--",
        "sh",
        "-c",
        r#"ip link set lo up && ip addr add 192.0.2.10/24 dev lo && exec "$@""#,
        "sh",
    ])
    .arg(bin())
    .arg("-c")
    .arg(&env.config)
    .arg("--run-root")
    .arg(&env.run_root)
    .args(["serve", "--listen", "0.0.0.0:9464", "--token-file"])
    .arg(env.path("secret"));
    let mut serve = env.spawn_command(cmd);
    let pid = serve.pid;
    wait_until("serve says it serves, or exits", || {
        serve.try_status().is_some() || serve.stderr().contains("console: serving")
    });
    assert!(
        serve.try_status().is_none(),
        "serve exited:\n{}",
        serve.stderr()
    );
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("open serve's netns");
    let statuses = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns with a descriptor we own; it moves only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let addr: SocketAddr = "192.0.2.10:9464".parse().unwrap();
        wait_until("serve answers at 192.0.2.10:9464", || {
            request(addr, "GET", "/metrics", &[], b"").is_ok()
        });
        let basic = "Basic dXNlcjpzM2NyZXQtdmFsdWU=";
        [
            "192.0.2.10:9464",
            "127.0.0.1:9464",
            "localhost:9464",
            "192.0.2.11:9464",
            "192.0.2.10:9465",
            "192.0.2.10",
            "evil.example:9464",
        ]
        .map(|host| {
            let r = request(
                addr,
                "GET",
                "/api/v1/chains",
                &[("Host", host), ("Authorization", basic)],
                b"",
            )
            .unwrap();
            (host, r.status)
        })
    })
    .join()
    .expect("the asking thread panicked");
    assert_eq!(
        statuses,
        [
            ("192.0.2.10:9464", 200),
            ("127.0.0.1:9464", 200),
            ("localhost:9464", 200),
            ("192.0.2.11:9464", 421),
            ("192.0.2.10:9465", 421),
            ("192.0.2.10", 421),
            ("evil.example:9464", 421),
        ]
    );
    serve.signal(libc::SIGTERM);
    serve.assert_exit(0);
}

/// `a` holds while `$T/hold-a` exists and `$T/go-a` does not (a task running while the test
/// acts); `b` is quick. An hour's cooldown: nothing runs by the schedule meanwhile.
const RUN_NOW: &str = r#"
[defaults]
success_cooldown = "1h"
fail_cooldown = "1h"
[tasks.a]
command = 'echo "a $RUN_CHAIN_RUN_ID" >> "$T/out"; if [ -e "$T/hold-a" ]; then while [ ! -e "$T/go-a" ]; do sleep 0.02; done; fi'
[tasks.b]
command = 'echo "b $RUN_CHAIN_RUN_ID" >> "$T/out"; echo "b says hello"'
"#;

/// Run-now on the web (issue 19): the confirmation page and its button, the checks every
/// action has (GET 405, token, Origin, Sec-Fetch-Site), the 409 of a running task and of a
/// pending request, 404 of an unknown task; accepted, a 303 to the run's page, which shows
/// the run `queued` while the running task holds the chain, then the run done; the run says
/// it is manual and who asked (the peer), in the pages and the API.
#[test]
fn run_now_on_the_web_lands_on_the_queued_run_and_says_why_when_refused() {
    let env = TestEnv::new(RUN_NOW);
    std::fs::write(env.dir.path().join("hold-a"), "").unwrap();
    let mut chain = env.spawn(&["--name", "ab", "a", "b"]);
    env.wait_running(&mut chain, "ab");
    let a_id = wait_running_task(&env, "ab", "a");
    let (serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-actions"]);
    let host = host_of(addr);
    let origin = format!("http://{host}");

    // A "Run now" per task on the chain's page and on the task's.
    let page = get(addr, "/chain/ab").text();
    for t in ["a", "b"] {
        assert!(
            page.contains(&format!("href=\"/chain/ab/task/{t}/run/confirm\"")),
            "{page}"
        );
    }
    let page = get(addr, "/chain/ab/task/b").text();
    assert!(
        page.contains("href=\"/chain/ab/task/b/run/confirm\""),
        "{page}"
    );
    let confirm = get(addr, "/chain/ab/task/b/run/confirm");
    assert_eq!(confirm.status, 200);
    confirm.assert_security_headers("run-now confirm");
    let c = confirm.text();
    assert!(
        c.contains("<form class=\"confirm\" method=\"post\" action=\"/chain/ab/task/b/run\">"),
        "{c}"
    );
    assert_eq!(get(addr, "/chain/ab/task/zz/run/confirm").status, 404);
    let token = action_token_at(addr, "/chain/ab/task/b/run/confirm");

    let r = get(addr, "/chain/ab/task/b/run");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("POST"));
    r.assert_security_headers("405");

    let post = |task: &str, headers: &[(&str, &str)], body: &str| {
        let mut all = vec![
            ("Host", host.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        all.extend_from_slice(headers);
        request(
            addr,
            "POST",
            &format!("/chain/ab/task/{task}/run"),
            &all,
            body.as_bytes(),
        )
        .unwrap()
    };
    let good = format!("token={token}");
    for (headers, body, what) in [
        (vec![], "", "no token"),
        (
            vec![],
            "token=0123456789abcdef0123456789abcdef",
            "a wrong token",
        ),
        (
            vec![("Origin", "http://evil.example")],
            good.as_str(),
            "a cross-site Origin",
        ),
        (vec![("Origin", "null")], good.as_str(), "Origin: null"),
        (
            vec![("Sec-Fetch-Site", "cross-site")],
            good.as_str(),
            "Sec-Fetch-Site: cross-site",
        ),
    ] {
        let r = post("b", &headers, body);
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        r.assert_security_headers(what);
    }
    let same = [
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];

    // The running task: 409, saying why, with the way back.
    let r = post("a", &same, &good);
    assert_eq!(r.status, 409, "{}", r.text());
    r.assert_security_headers("409");
    let t = r.text();
    assert!(t.contains("is running now"), "{t}");
    assert!(t.contains("href=\"/chain/ab/task/a\""), "{t}");
    // An unknown task: 404.
    let r = post("zz", &same, &good);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("no task named"), "{}", r.text());
    assert_eq!(env.lines("out"), ["a 1"], "a refused run-now ran a task");

    // Accepted: 303 to the run's page, queued while a holds the chain.
    let r = post("b", &same, &good);
    assert_eq!(r.status, 303, "{}", r.text());
    let to = r.header("Location").unwrap_or_default().to_string();
    let id: u64 = to
        .strip_prefix("/run/ab/b/")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("303 to {to:?}"));
    let api = get(addr, &format!("/api/v1/runs/ab/b/{id}"));
    assert_eq!(api.status, 200, "{}", api.text());
    let run = api.json();
    assert_eq!(run["run"]["outcome"], "queued", "{run:#}");
    assert_eq!(run["run"]["trigger"], "manual", "{run:#}");
    let by = run["run"]["requested_by"].as_str().unwrap_or_default();
    assert!(by.starts_with("web 127.0.0.1:"), "{run:#}");
    let page = get(addr, &to);
    assert_eq!(page.status, 200);
    let t = page.text();
    assert!(t.contains("o-queued") && t.contains("Queued:"), "{t}");
    assert!(t.contains("manual") && t.contains(by), "{t}");
    // `/` and the chain's page show the request under what the chain does now, linked.
    for path in ["/", "/chain/ab"] {
        let t = get(addr, path).text();
        assert!(
            t.contains(&format!(
                "queued: <a href=\"{to}\">b (run {id})</a>, asked by {by}"
            )),
            "{path}: {t}"
        );
    }
    // The page refreshes into the running run: its output is live while it is queued.
    assert!(
        t.contains("<div id=\"output-box\" data-live"),
        "the queued run's output is not refreshed: {t}"
    );
    // A second request while this one is pending: 409.
    let r = post("b", &same, &good);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("pending"), "{}", r.text());
    wait_until("the run-now is logged with its source", || {
        serve
            .stderr()
            .contains("console: run-now of b in chain ab asked by 127.0.0.1:")
    });

    // a ends; b runs, out of its turn, and is done.
    std::fs::write(env.dir.path().join("go-a"), "").unwrap();
    wait_until("b's run-now run is done", || {
        get(addr, &format!("/api/v1/runs/ab/b/{id}")).json()["run"]["outcome"] == "ok"
    });
    let run = get(addr, &format!("/api/v1/runs/ab/b/{id}")).json();
    assert_eq!(run["output"], "b says hello\n", "{run:#}");
    assert_eq!(run["run"]["trigger"], "manual", "{run:#}");
    assert_eq!(run["run"]["requested_by"].as_str(), Some(by), "{run:#}");
    let page = get(addr, &to).text();
    assert!(
        page.contains("b says hello") && page.contains("o-ok"),
        "{page}"
    );
    assert!(
        !page.contains("<div id=\"output-box\" data-live"),
        "a finished run's output is not refreshed: {page}"
    );
    // The history, in the API and on the task's page, says why each run ran.
    let runs = get(addr, "/api/v1/chains/ab/tasks/b/runs").json();
    assert_eq!(runs[0]["run_id"], id, "{runs:#}");
    assert_eq!(runs[0]["trigger"], "manual", "{runs:#}");
    assert_eq!(runs[0]["requested_by"].as_str(), Some(by), "{runs:#}");
    let runs = get(addr, "/api/v1/chains/ab/tasks/a/runs").json();
    assert_eq!(runs[0]["run_id"], a_id, "{runs:#}");
    assert_eq!(runs[0]["trigger"], "schedule", "{runs:#}");
    assert!(runs[0].get("requested_by").is_none(), "{runs:#}");
    let page = get(addr, "/chain/ab/task/b").text();
    assert!(
        page.contains("<th>Trigger</th>")
            && page.contains(&format!("<td class=\"trigger\">manual (by {by})</td>")),
        "{page}"
    );
    let page = get(addr, "/chain/ab/task/a").text();
    assert!(
        page.contains("<td class=\"trigger\">schedule</td>"),
        "{page}"
    );
    let index = get(addr, "/").text();
    assert!(index.contains("b run 1: ok (manual (by web "), "{index}");
    assert_eq!(env.lines("out"), ["a 1", "b 1"]);
    env.assert_running(&mut chain, "ab");

    // An unknown chain: 404. A chain that is down: 409, saying so.
    let r = request(
        addr,
        "POST",
        "/chain/zz/task/b/run",
        &[("Host", host.as_str()), ("Origin", origin.as_str())],
        good.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    env.sub(&["stop", "ab"]).assert_code(0);
    chain.assert_exit(0);
    let r = post("b", &same, &good);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("not running"), "{}", r.text());
}

/// A chain that holds its lock but does not answer (frozen with SIGSTOP): the web Run now waits
/// for the control channel's deadline (10 s) and answers 503, saying that the chain did not
/// answer; the console itself stays responsive meanwhile.
#[test]
fn run_now_on_the_web_of_a_chain_that_does_not_answer_is_503() {
    let env = TestEnv::new(RUN_NOW);
    let mut chain = env.spawn(&["--name", "ab", "a", "b"]);
    env.wait_running(&mut chain, "ab");
    // a has run; the chain is in its hour's cooldown, listening on its control socket.
    env.wait_chain_status("ab", "ab in its cooldown", |c| {
        c["now"]["state"] == "cooldown" && c["now"]["task"] == "b"
    });
    let (serve, addr) = start_serve(&env, "127.0.0.1", &["--allow-actions"]);
    let host = host_of(addr);
    let origin = format!("http://{host}");
    let token = action_token_at(addr, "/chain/ab/task/b/run/confirm");
    send_signal(chain.pid, libc::SIGSTOP);
    let t0 = std::time::Instant::now();
    let r = request(
        addr,
        "POST",
        "/chain/ab/task/b/run",
        &[
            ("Host", host.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", origin.as_str()),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        format!("token={token}").as_bytes(),
    );
    let waited = t0.elapsed();
    // Another page while the chain is frozen: served (the console does not hang on the chain).
    let page = get(addr, "/chain/ab");
    send_signal(chain.pid, libc::SIGCONT);
    let r = r.unwrap_or_else(|e| panic!("the run-now request failed: {e}"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("did not answer within 10s"),
        "{}",
        r.text()
    );
    r.assert_security_headers("503");
    assert!(
        waited >= std::time::Duration::from_secs(9),
        "answered after {waited:?}"
    );
    assert_eq!(page.status, 200);
    drop(serve);
    chain.signal(libc::SIGTERM);
    chain.assert_exit(0);
}
