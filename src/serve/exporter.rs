//! `run-chain exporter`: serve the metrics of a RUN_ROOT over HTTP at `/metrics`.
//!
//! A small blocking HTTP server (tiny_http) on its own thread; each scrape collects
//! a fresh snapshot (bounded cost, see `view::metrics`). The main thread waits for SIGTERM
//! or SIGINT on the signal self-pipe and then exits cleanly. Any path other than
//! `/metrics` is a 404.

use std::path::PathBuf;
use std::time::Instant;

use crate::error::{exit, Error, Result};
use crate::signals::{Sig, Signals};
use crate::sys;

/// Serve until SIGTERM/SIGINT.
pub(crate) fn serve(run_root: PathBuf, listen: &str) -> Result<u8> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        Error::Usage(format!(
            "--listen {listen:?}: expected an address like 127.0.0.1:9464 ({e})"
        ))
    })?;
    let signals = Signals::install()?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        // Most likely another exporter: as a chain that is already running, exit 75.
        std::io::ErrorKind::AddrInUse => Error::Busy(format!(
            "--listen {addr}: the address is already in use (another exporter?): {e}"
        )),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::PermissionDenied => {
            Error::Usage(format!("--listen {addr}: cannot listen there: {e}"))
        }
        _ => Error::Internal(format!("failed to listen on {addr}: {e}")),
    })?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| Error::Internal(format!("failed to listen on {addr}: {e}")))?;
    log::info!(
        "exporter: serving the metrics of {} at http://{addr}/metrics",
        run_root.display()
    );
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("").to_string();
                if path != "/metrics" {
                    let _ = req.respond(
                        tiny_http::Response::from_string("not found; metrics are at /metrics\n")
                            .with_status_code(404),
                    );
                    continue;
                }
                let t0 = Instant::now();
                let resp = match crate::view::metrics::collect(&run_root) {
                    Ok(snap) => {
                        let body =
                            crate::view::metrics::render(&snap, Some(t0.elapsed().as_secs_f64()));
                        let ct = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4; charset=utf-8"[..],
                        );
                        let mut r = tiny_http::Response::from_string(body);
                        if let Ok(h) = ct {
                            r = r.with_header(h);
                        }
                        r
                    }
                    Err(e) => {
                        log::error!("exporter: {e}");
                        tiny_http::Response::from_string(format!("{e}\n")).with_status_code(500)
                    }
                };
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| Error::os("start the HTTP thread", e))?;
    loop {
        let mut fds = [sys::pollfd(signals.fd(), libc::POLLIN)];
        sys::ppoll(&mut fds, None).map_err(|e| Error::os("wait in ppoll", e))?;
        if signals
            .drain()
            .iter()
            .any(|s| matches!(s, Sig::Term | Sig::Int | Sig::Quit))
        {
            log::info!("exporter: stopping");
            return Ok(exit::OK);
        }
    }
}
