//! `run-chain exporter`: the metrics of a RUN_ROOT over HTTP at `/metrics`, and nothing
//! else (an upgrade never turns a scrape port into a console: that is `serve`). The
//! server itself (threads, timeouts) is [`super::http`]'s; `serve` answers `/metrics`
//! with the same [`metrics`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::http::{self, Answer};
use crate::error::Result;
use crate::view::metrics::Fleet;

/// Serve the metrics at `listen` until SIGTERM/SIGINT (with `fleet`: this host's part
/// of the fleet, see [`crate::view::metrics::scope_to_host`]).
pub(crate) fn serve(run_root: PathBuf, listen: &str, fleet: Option<Fleet>) -> Result<u8> {
    let addr = http::parse_listen(listen)?;
    let root = run_root.clone();
    let handler = Arc::new(move |req: &mut tiny_http::Request| {
        if is_metrics(req.url()) {
            metrics(&root, fleet.as_ref())
        } else {
            tiny_http::Response::from_string("not found; metrics are at /metrics\n")
                .with_status_code(404)
        }
    });
    http::serve(addr, "exporter", handler, || {
        log::info!(
            "exporter: serving the metrics of {} at http://{addr}/metrics",
            run_root.display()
        );
    })
}

/// Whether a request's URL names the metrics (a query string does not change the path).
pub(crate) fn is_metrics(url: &str) -> bool {
    url.split('?').next() == Some("/metrics")
}

/// The answer to a scrape: a fresh snapshot, or a 500 that says what failed.
pub(crate) fn metrics(run_root: &Path, fleet: Option<&Fleet>) -> Answer {
    let t0 = Instant::now();
    match crate::view::metrics::collect_fleet(run_root, fleet) {
        Ok(snap) => {
            let body = crate::view::metrics::render(&snap, Some(t0.elapsed().as_secs_f64()));
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_metrics_path_is_the_metrics() {
        assert!(is_metrics("/metrics"));
        assert!(is_metrics("/metrics?x=1"));
        assert!(is_metrics("/metrics?"));
        for url in [
            "/",
            "",
            "/nope",
            "/metrics/",
            "/metricsx",
            "metrics",
            "/METRICS",
        ] {
            assert!(!is_metrics(url), "{url:?}");
        }
    }
}
