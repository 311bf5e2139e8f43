//! What the console's tests share: starting `run-chain serve` on a free port, and raw HTTP
//! requests over a std TcpStream (so that every header, the Host included, is the test's).
#![allow(dead_code)]

use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Every header the console puts on its answers, with its value.
    pub fn assert_security_headers(&self, what: &str) {
        let csp = self
            .header("Content-Security-Policy")
            .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy: {self:?}"));
        assert!(
            csp.contains("script-src 'self'")
                && !csp.contains("unsafe-inline")
                && csp.contains("frame-ancestors 'none'"),
            "{what}: CSP {csp}"
        );
        assert_eq!(self.header("X-Frame-Options"), Some("DENY"), "{what}");
        assert_eq!(
            self.header("X-Content-Type-Options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(
            self.header("Referrer-Policy"),
            Some("same-origin"),
            "{what}"
        );
    }
}

/// One request: `method path`, the given header lines (`Host` is not added: give it), and a
/// body (with its Content-Length). HTTP/1.0, so the server closes after its answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// A GET with `Host` naming `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let host = addr.to_string();
    request(addr, "GET", path, &[("Host", &host)], b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `run-chain serve --listen HOST:PORT ARGS...` on a free port of `host`, once it serves
/// (it has logged so and answers); another port is tried if that one was taken meanwhile.
/// The address returned is on 127.0.0.1 (also when listening on 0.0.0.0).
pub fn start_serve(env: &TestEnv, host: &str, args: &[&str]) -> (Runner, SocketAddr) {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let listen = format!("{host}:{port}");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut all = vec!["serve", "--listen", &listen];
        all.extend_from_slice(args);
        let mut serve = env.spawn_command(env.sub_command(&all));
        let mut serving = false;
        wait_until(&format!("serve answers at {listen}, or exits"), || {
            if serve.try_status().is_some() {
                return true;
            }
            serving = serve.stderr().contains("console: serving")
                && request(addr, "GET", "/metrics", &[], b"").is_ok();
            serving
        });
        if serving && serve.try_status().is_none() {
            return (serve, addr);
        }
        let stderr = serve.stderr();
        assert!(
            stderr.contains("already in use"),
            "serve at {listen} exited ({:?}) for another reason than its port; stderr:\n{stderr}",
            serve.try_status()
        );
        failures.push(format!("{listen}: {stderr}"));
    }
    panic!("serve could not listen on 5 free ports: {failures:#?}");
}

/// The token of the confirmation form of `action` on `chain`.
pub fn action_token(addr: SocketAddr, chain: &str, action: &str) -> String {
    let page = get(addr, &format!("/chain/{chain}/{action}/confirm")).text();
    let at = page
        .find("name=\"token\" value=\"")
        .unwrap_or_else(|| panic!("no token on the confirmation page: {page}"));
    let rest = &page[at + "name=\"token\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The token of the confirmation form at `path`.
pub fn action_token_at(addr: SocketAddr, path: &str) -> String {
    let page = get(addr, path).text();
    let at = page
        .find("name=\"token\" value=\"")
        .unwrap_or_else(|| panic!("no token on the confirmation page {path}: {page}"));
    let rest = &page[at + "name=\"token\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}
