//! The HTTP server that `exporter` and `serve` share: a listening socket, a few worker
//! threads, and a handler that turns a request into an answer.
//!
//! A small blocking HTTP server (tiny_http). tiny_http accepts on a thread of its own and
//! reads each connection's requests on a thread of that connection (from a pool that grows as
//! needed: see vendor/tiny_http/PATCHED.md for the fix that makes it so); a fixed pool of
//! [`WORKERS`] threads takes the complete requests (`Server::recv`) and answers them, each
//! request with a fresh read (a scrape's cost is bounded, see `view::metrics`). So a slow or stuck client
//! holds at most one worker while the others go on serving:
//! - a client that sends half a request line or half its headers holds only its connection's
//!   reader thread (no worker sees the request until its headers are complete);
//! - a client that never reads a large answer holds the worker that writes it, until a write
//!   has made no progress for [`SEND_TIMEOUT`] (a send timeout set on the listening socket,
//!   which Linux copies to every accepted socket; tiny_http may try once more to flush what
//!   it buffered, so twice that at most); then that answer is dropped;
//! - a client that declares a body (`Content-Length`) and never sends it all would hold the
//!   worker that answered it until it closes its connection (tiny_http reads the unread rest
//!   of a body once the answer is sent, with no timeout); so such a request is answered on a
//!   thread of its own, up to [`BODY_THREADS`] at once (beyond, by the worker).
//!
//! So [`WORKERS`] clients that never read, at once, stall a scrape (for [`SEND_TIMEOUT`]);
//! fewer do not, nor do any number of clients that send half a request.
//! The main thread waits for SIGTERM or SIGINT on the signal self-pipe and then returns: the
//! process exits without waiting for the workers.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{exit, Error, Result};
use crate::signals::{Sig, Signals};
use crate::sys;

/// How many requests are answered at once.
pub(crate) const WORKERS: usize = 4;

/// How long one write of an answer may wait for a client that takes no data, before the answer
/// is given up and its worker freed. Prometheus' default scrape timeout is 10 s.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How many requests that declare a body may be answered on threads of their own at once.
pub(crate) const BODY_THREADS: usize = 64;

/// An answer.
pub(crate) type Answer = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

/// What answers a request (it may read the request's body).
pub(crate) type Handler = dyn Fn(&mut tiny_http::Request) -> Answer + Send + Sync;

/// The address `--listen` names.
pub(crate) fn parse_listen(listen: &str) -> Result<std::net::SocketAddr> {
    listen.parse().map_err(|e| {
        Error::Usage(format!(
            "--listen {listen:?}: expected an address like 127.0.0.1:9464 ({e})"
        ))
    })
}

/// Serve `addr` with `handler` until SIGTERM/SIGINT; `what` names the server in the log
/// ("exporter", "console").
pub(crate) fn serve(
    addr: std::net::SocketAddr,
    what: &str,
    handler: Arc<Handler>,
    started: impl FnOnce(),
) -> Result<u8> {
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
    // Before the first accept, so that every connection inherits it.
    set_send_timeout(&listener, SEND_TIMEOUT)
        .map_err(|e| Error::os(format!("set a send timeout on {addr}"), e))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| Error::Internal(format!("failed to listen on {addr}: {e}")))?;
    let server = Arc::new(server);
    let bodies = Arc::new(AtomicUsize::new(0));
    for i in 0..WORKERS {
        let server = Arc::clone(&server);
        let bodies = Arc::clone(&bodies);
        let handler = Arc::clone(&handler);
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || work(&server, &handler, &bodies))
            .map_err(|e| Error::os("start an HTTP thread", e))?;
    }
    started();
    loop {
        let mut fds = [sys::pollfd(signals.fd(), libc::POLLIN)];
        sys::ppoll(&mut fds, None).map_err(|e| Error::os("wait in ppoll", e))?;
        if signals
            .drain()
            .iter()
            .any(|s| matches!(s, Sig::Term | Sig::Int | Sig::Quit))
        {
            log::info!("{what}: stopping");
            return Ok(exit::OK);
        }
    }
}

/// One worker: answer requests, one at a time, until the server fails. `bodies` counts the
/// threads that answer requests with a body (see [`BODY_THREADS`]).
fn work(server: &tiny_http::Server, handler: &Arc<Handler>, bodies: &Arc<AtomicUsize>) {
    loop {
        let mut req = match server.recv() {
            Ok(req) => req,
            Err(e) => {
                // tiny_http's acceptor has stopped (it passes its error to one worker).
                log::error!("http: no more connections: {e}");
                return;
            }
        };
        if !declares_body(req.body_length()) {
            let resp = handler(&mut req);
            respond(req, resp);
            continue;
        }
        let Some(slot) = BodySlot::take(bodies, BODY_THREADS) else {
            let resp = handler(&mut req);
            respond(req, resp);
            continue;
        };
        let handler = Arc::clone(handler);
        let spawned = std::thread::Builder::new()
            .name("http-body".into())
            .spawn(move || {
                let _slot = slot;
                let resp = handler(&mut req);
                respond(req, resp);
            });
        if let Err(e) = spawned {
            // The request went with the closure: tiny_http answers it 500.
            log::warn!("http: could not start a thread for a request with a body: {e}");
        }
    }
}

/// Sends an answer; a failure (most often a client that took no data for SEND_TIMEOUT) is
/// logged. tiny_http then reads what is left of the request's body, if any.
fn respond(req: tiny_http::Request, resp: Answer) {
    let peer = req.remote_addr().copied();
    if let Err(e) = req.respond(resp) {
        match peer {
            Some(peer) => log::warn!("http: answer to {peer} not sent: {e}"),
            None => log::warn!("http: answer not sent: {e}"),
        }
    }
}

/// Whether a request declares a body that tiny_http may still have to read (`Content-Length`
/// above zero). A chunked body has no length, and tiny_http does not wait for its rest.
fn declares_body(body_length: Option<usize>) -> bool {
    body_length.is_some_and(|n| n > 0)
}

/// One of the [`BODY_THREADS`], given back when dropped.
struct BodySlot(Arc<AtomicUsize>);

impl BodySlot {
    /// A slot if fewer than `max` are taken.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<BodySlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| BodySlot(Arc::clone(count)))
    }
}

impl Drop for BodySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `SO_SNDTIMEO` on a socket. On a listening socket it does nothing itself (accept waits
/// under `SO_RCVTIMEO`), but each accepted socket starts with a copy of it.
fn set_send_timeout(socket: &impl AsRawFd, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Under a million: fits any suseconds_t.
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid descriptor, a timeval that lives across the call, and its exact size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_declared_length_is_a_body_to_wait_for() {
        assert!(!declares_body(None));
        assert!(!declares_body(Some(0)));
        assert!(declares_body(Some(1)));
        assert!(declares_body(Some(100_000)));
    }

    #[test]
    fn body_slots_are_bounded_and_given_back() {
        let count = Arc::new(AtomicUsize::new(0));
        let a = BodySlot::take(&count, 2);
        let b = BodySlot::take(&count, 2);
        assert!(a.is_some() && b.is_some());
        assert!(BodySlot::take(&count, 2).is_none());
        drop(a);
        assert_eq!(count.load(Ordering::Acquire), 1);
        let c = BodySlot::take(&count, 2);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_send_timeout_is_copied_to_accepted_sockets() {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            return; // no loopback to listen on: nothing to check here
        };
        set_send_timeout(&listener, Duration::from_millis(2500)).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(
            accepted.write_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
    }
}
