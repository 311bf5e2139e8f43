//! The exporter outlives running out of descriptors: while every descriptor it may open is
//! taken by idle connections, new connections wait in the kernel's queue; once the idle
//! clients go, it accepts and answers again. (tiny_http's acceptor used to stop for good at
//! its first `accept` error, EMFILE included, and the exporter then served nothing until it
//! was restarted.) Real binary, real TCP on 127.0.0.1, a real descriptor limit
//! (RLIMIT_NOFILE set in the exporter's process before its exec).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::Duration;

/// The exporter's descriptor limit: room for what it opens at start (the listener, its
/// ppoll's signal pipe, the logger, the store), and few enough connections that the test
/// reaches it quickly.
const NOFILE: u64 = 48;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One scrape: Ok(body) if the answer is a 200 with the metrics in it.
fn scrape(addr: SocketAddr, wait: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(wait)).unwrap();
    s.set_write_timeout(Some(wait)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read the answer: {e} (after {} bytes)", raw.len()))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(format!("not a 200: {:?}", text.lines().next()));
    }
    if !text.contains("run_chain_") {
        return Err(format!("no metrics in the answer: {text:?}"));
    }
    Ok(text)
}

/// The number of descriptors `pid` has open.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn the_exporter_serves_again_after_running_out_of_descriptors() {
    let env = TestEnv::new("[tasks.t]\ncommand = 'exit 0'\n");
    env.run(&["--once", "t"]).assert_code(0);

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = env.run_command(&["exporter", "--listen", &addr.to_string()]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut exporter = env.spawn_command(cmd);
    let pid = exporter.pid;
    let stderr = exporter.stderr.clone();
    exporter.wait_for("the exporter to answer a scrape", || {
        exporter_serving(&addr)
    });

    // Idle connections (no request) until the exporter has no descriptor left; the kernel
    // completes connections it has not accepted (its listen queue), so connecting goes on
    // succeeding past that point.
    let mut idle = Vec::new();
    wait_until_for(
        Duration::from_secs(60),
        "the exporter to use every descriptor its limit allows",
        || {
            for _ in 0..4 {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(s) => idle.push(s),
                    Err(e) => panic!(
                        "connect {addr} with {} idle connections: {e} (the exporter stopped \
                         listening?); its stderr:\n{}",
                        idle.len(),
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    ),
                }
            }
            assert!(
                idle.len() < 120,
                "{} idle connections and the exporter has {} descriptors open, limit {NOFILE}",
                idle.len(),
                open_fds(pid)
            );
            // The exporter says so when an accept (or the dup of an accepted socket) fails.
            std::fs::read_to_string(&stderr)
                .unwrap_or_default()
                .contains("Too many open files")
        },
    );
    assert_eq!(exporter.try_status(), None, "the exporter exited");
    // At the limit a scrape is not answered: it waits in the queue (this shows the test
    // reached the state it is about).
    assert!(
        scrape(addr, Duration::from_millis(300)).is_err(),
        "a scrape was answered with every descriptor taken ({} open, limit {NOFILE})",
        open_fds(pid)
    );

    // The idle clients go: the exporter closes their connections and accepts again.
    drop(idle);
    let mut last = String::new();
    wait_until_for(
        Duration::from_secs(60),
        "a scrape to be answered once the idle connections are gone",
        || match scrape(addr, Duration::from_secs(5)) {
            Ok(_) => true,
            Err(e) => {
                last = e;
                false
            }
        },
    );
    assert_eq!(
        exporter.try_status(),
        None,
        "the exporter exited; last scrape error: {last}; stderr:\n{}",
        exporter.stderr()
    );
    exporter.signal(libc::SIGTERM);
    exporter.assert_exit(0);
}

fn exporter_serving(addr: &SocketAddr) -> bool {
    scrape(*addr, Duration::from_secs(5)).is_ok()
}
