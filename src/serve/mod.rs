//! The HTTP servers: `run-chain exporter` (the metrics at `/metrics`, nothing else) and
//! `run-chain serve` (the web console, its JSON API, and the same `/metrics`), over one
//! small blocking server ([`http`]).

pub(crate) mod console;
pub(crate) mod exporter;
pub(crate) mod http;
