//! The exporter serves from a few threads: clients that are stuck do not stall another
//! client's scrape: any number that send half a request (half a request line, half the
//! headers, or a declared body never finished) and hold the connection, and fewer than the
//! exporter's worker threads that ask for a large answer and never read it; a burst of new
//! connections beside stuck ones is read at once; the exporter still stops at once on SIGTERM
//! while clients are stuck. Real binary, real TCP on 127.0.0.1, a RUN_ROOT whose metrics are larger than
//! what the kernel buffers for one connection.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// The exporter's worker threads (`WORKERS` in src/serve/exporter.rs).
const POOL: usize = 4;

/// Chains that run every task once, at the same time, to fill the store.
const CHAINS: usize = 4;

/// A config of `n` tasks that succeed at once, with names of 100 characters (the most a name
/// may have), so that every series of the metrics is long.
fn config(n: usize) -> String {
    let mut text = String::from("[defaults]\nsuccess_cooldown = \"0s\"\n");
    for i in 0..n {
        text.push_str(&format!("[tasks.{}]\ncommand = 'exit 0'\n", task_name(i)));
    }
    text
}

fn task_name(i: usize) -> String {
    format!("t{i:04}{}", "x".repeat(95))
}

fn chain_name(i: usize) -> String {
    format!("c{i:02}{}", "y".repeat(97))
}

/// The largest send buffer the kernel grows a TCP socket to (`tcp_wmem`'s maximum).
fn tcp_wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20)
}

/// Answers must be larger than this to stall a writer whose client reads nothing: the server's
/// largest send buffer, and a margin for the client's receive buffer (which grows only as its
/// owner reads: ~128 KiB by default).
fn stall_size() -> usize {
    tcp_wmem_max() + (1 << 20)
}

/// A RUN_ROOT whose `/metrics` answer is larger than `stall_size()`: CHAINS chains of the same
/// tasks, each run through once (at the same time). Returns the env and the metrics' size.
fn big_store() -> (TestEnv, usize) {
    // About 30 lines of ~270 bytes per chain and task (measured: 8 KiB), counted as 6 KiB for
    // a margin; the size is checked below.
    let per_series = 6 * 1024;
    let tasks = (stall_size() / (CHAINS * per_series) + 1).min(2000);
    let env = TestEnv::new(&config(tasks));
    let names: Vec<String> = (0..tasks).map(task_name).collect();
    let mut runs: Vec<Runner> = (0..CHAINS)
        .map(|c| {
            let chain = chain_name(c);
            let mut args = vec!["--once", "--name", chain.as_str()];
            args.extend(names.iter().map(String::as_str));
            env.spawn(&args)
        })
        .collect();
    for r in &mut runs {
        r.assert_exit(0);
    }
    let once = env.run(&["metrics"]);
    once.assert_code(0);
    let size = once.stdout.len();
    assert!(
        size > stall_size(),
        "the metrics ({size} bytes, {tasks} tasks in {CHAINS} chains) are not larger than \
         {} bytes: the test would not stall a writer; give it more tasks",
        stall_size()
    );
    (env, size)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `run-chain exporter --listen 127.0.0.1:PORT` and waits until it answers a scrape;
/// another port is tried if something took this one meanwhile.
fn start_exporter(env: &TestEnv) -> (Runner, SocketAddr) {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut exporter = env.spawn(&["exporter", "--listen", &addr.to_string()]);
        let mut serving = false;
        wait_until(&format!("the exporter answers at {addr}, or exits"), || {
            if exporter.try_status().is_some() {
                return true;
            }
            serving = exporter.stderr().contains("exporter: serving") && scrape(addr).is_ok();
            serving
        });
        if serving && exporter.try_status().is_none() {
            return (exporter, addr);
        }
        let stderr = exporter.stderr();
        assert!(
            stderr.contains("already in use"),
            "the exporter at {addr} exited ({:?}) for another reason than its port; stderr:\n{stderr}",
            exporter.try_status()
        );
        failures.push(format!("{addr}: {stderr}"));
    }
    panic!("the exporter could not listen on a free port: {failures:#?}");
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads the status line and headers (and whatever body came with them) of an answer: the
/// status, the Content-Length, and the body bytes read so far.
fn read_head(s: &mut TcpStream) -> Result<(u16, usize, Vec<u8>), String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read the head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the connection closed before the end of the head: {:?}",
                String::from_utf8_lossy(&raw)
            ));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = raw[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    Ok((status, length, body))
}

/// Reads the rest of a body of `length` bytes of which `body` came already.
fn read_body(s: &mut TcpStream, length: usize, mut body: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 64 * 1024];
    while body.len() < length {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read the body ({} of {length} bytes): {e}", body.len()))?;
        if n == 0 {
            return Err(format!(
                "the connection closed after {} of {length} bytes of the body",
                body.len()
            ));
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok(body)
}

/// A whole scrape (`GET /metrics HTTP/1.0`), read within the deadline: the body of a 200.
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let (status, length, body) = read_head(&mut s)?;
    let body = read_body(&mut s, length, body)?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    String::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))
}

/// A scrape that must succeed while other clients are stuck.
fn assert_scrape_answers(addr: SocketAddr, size: usize, while_what: &str) {
    let t0 = std::time::Instant::now();
    let body = scrape(addr).unwrap_or_else(|e| {
        panic!(
            "a scrape while {while_what} failed after {:?}: {e}",
            t0.elapsed()
        )
    });
    // As large as `run-chain metrics` said (only the scrape duration's digits may differ).
    assert!(
        body.len().abs_diff(size) < 64 && body.contains("run_chain_up{"),
        "a scrape while {while_what}: {} bytes, expected about {size}",
        body.len()
    );
}

/// A client that sends half a request line and holds the connection.
fn half_request_line(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(b"GET /metr").unwrap();
    s
}

/// A client that sends a request line and half its headers and holds the connection.
fn half_headers(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: te").unwrap();
    s
}

/// A client that asks for the metrics with a body it declares but never finishes. It reads
/// the whole answer, so the worker that wrote it has nothing left but that body to wait for.
fn half_body(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[b'x'; 2000]).unwrap();
    // HTTP/1.1: the answer comes in chunks; it ends with the last (empty) one.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !raw.ends_with(b"\r\n0\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the connection closed after {} bytes", raw.len());
        raw.extend_from_slice(&buf[..n]);
    }
    assert!(
        raw.starts_with(b"HTTP/1.1 200 "),
        "{:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(64)])
    );
    s
}

/// A client that asks for the metrics, reads the beginning of the answer (so its worker is
/// writing it) and then nothing more. Returns the stream and the answer's length and first
/// bytes, for `finish_stalled`. (Its receive buffer stays as the kernel makes it: one made
/// small slows the rest of the answer to a crawl over loopback's large segments.)
fn stalled_reader(addr: SocketAddr) -> (TcpStream, usize, Vec<u8>) {
    let mut s = connect(addr);
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let (status, length, body) = read_head(&mut s).unwrap();
    assert_eq!(status, 200);
    (s, length, body)
}

/// Reads the rest of a stalled reader's answer: it must be whole, so its worker was still
/// writing it (and another worker answered the scrape meanwhile).
fn finish_stalled(exporter: &Runner, stalled: (TcpStream, usize, Vec<u8>)) {
    let (mut s, length, body) = stalled;
    if let Err(e) = read_body(&mut s, length, body) {
        panic!(
            "the stalled answer was not kept for its client ({e}): the scrape beside it took \
             longer than the exporter's send timeout? Its stderr:\n{}",
            exporter.stderr()
        );
    }
}

/// Stops the exporter with SIGTERM, while clients may still hold connections: it exits 0 at once.
fn stop(mut exporter: Runner) {
    exporter.signal(libc::SIGTERM);
    wait_until("the exporter exits on SIGTERM", || {
        exporter.try_status().is_some()
    });
    assert_eq!(
        exporter.code(),
        Some(0),
        "exporter exit on SIGTERM; stderr:\n{}",
        exporter.stderr()
    );
}

#[test]
fn half_requests_do_not_stall_a_scrape() {
    let (env, size) = big_store();
    let (exporter, addr) = start_exporter(&env);
    // Half a request line and half the headers: tiny_http reads them on the connection's own
    // thread, and no worker sees them.
    let _line = half_request_line(addr);
    let _headers = half_headers(addr);
    assert_scrape_answers(addr, size, "two clients hold half a request");
    // Bodies declared and never finished, more than the workers: tiny_http waits for the
    // rest of each after the answer, on a thread of its own, not on a worker.
    let held: Vec<TcpStream> = (0..2 * POOL).map(|_| half_body(addr)).collect();
    assert_scrape_answers(addr, size, "clients hold half a body each");
    drop(held);
    stop(exporter);
}

#[test]
fn a_client_that_never_reads_a_large_answer_does_not_stall_a_scrape() {
    let (env, size) = big_store();
    let (exporter, addr) = start_exporter(&env);
    let stalled = stalled_reader(addr);
    assert_scrape_answers(addr, size, "a client reads nothing of its answer");
    finish_stalled(&exporter, stalled);
    stop(exporter);
}

#[test]
fn clients_stuck_in_every_way_up_to_the_pool_less_one_do_not_stall_a_scrape() {
    let (env, size) = big_store();
    let (exporter, addr) = start_exporter(&env);
    // No worker for these: as many as one likes.
    let _lines: Vec<TcpStream> = (0..POOL).map(|_| half_request_line(addr)).collect();
    let _headers: Vec<TcpStream> = (0..POOL).map(|_| half_headers(addr)).collect();
    // Nor these (each a thread of its own): more than the workers.
    let _bodies: Vec<TcpStream> = (0..POOL + 1).map(|_| half_body(addr)).collect();
    // A worker each, POOL - 1 in all.
    let stalled: Vec<_> = (0..POOL - 1).map(|_| stalled_reader(addr)).collect();
    assert_scrape_answers(addr, size, "clients are stuck in every way");
    for s in stalled {
        finish_stalled(&exporter, s);
    }
    // The exporter stops at once while clients still hold connections (and a worker).
    let _stalled = stalled_reader(addr);
    stop(exporter);
}

/// Connections that come in a burst while the threads reading connections are taken by
/// clients that never finish their request: each new one still gets a reader. (tiny_http
/// 0.12.0's thread pool could queue a connection for a thread that was already taken, so that
/// it waited until a stuck client went: a scrape or two out of twenty, here, before the fix
/// in vendor/tiny_http.)
#[test]
fn a_burst_of_connections_beside_half_requests_is_read_at_once() {
    let env = TestEnv::new(&config(1));
    env.run(&["--once", "--name", "c", &task_name(0)])
        .assert_code(0);
    let (exporter, addr) = start_exporter(&env);
    let rounds = scaled(30, 200);
    for round in 0..rounds {
        let held: Vec<TcpStream> = (0..2 * POOL).map(|_| half_request_line(addr)).collect();
        if let Err(e) = scrape(addr) {
            panic!(
                "round {round} of {rounds}: a scrape beside {} half requests: {e}",
                held.len()
            );
        }
    }
    stop(exporter);
}
