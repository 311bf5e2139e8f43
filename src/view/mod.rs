//! What the readers show, from RUN_ROOT and the record store, never taking a lock:
//! `status`, `history` and `log` ([`report`], as text or JSON) and the Prometheus
//! exposition ([`metrics`]).

pub(crate) mod metrics;
pub(crate) mod report;
