//! The HTTP server: `run-chain exporter`, the metrics at `/metrics`.

pub(crate) mod exporter;

pub(crate) use exporter::serve;
