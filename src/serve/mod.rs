//! The HTTP server: `run-chain exporter`, the metrics at `/metrics`.

pub mod exporter;

pub use exporter::serve;
