//! What the readers show, from RUN_ROOT and the record store, never taking a lock.
//!
//! Each reader builds a typed view first (the one place that reads: store, lock holders,
//! `CHAIN.state`), then renders it, purely, as text or as JSON (`serde`, the views'
//! fields named and ordered as the JSON's keys): `status` ([`status::StatusView`]),
//! `history` (a list of [`runs::RunView`]), `log` ([`log::LogView`]). A text that says
//! "3m ago" is given `now`. The Prometheus exposition is [`metrics`]'s. The web console's
//! pages are typed views too ([`console`]), rendered as HTML by [`html`] (maud: escaped by
//! default), task output made text by [`clean`].

pub(crate) mod clean;
pub(crate) mod console;
pub(crate) mod history;
pub(crate) mod html;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod runs;
pub(crate) mod status;
pub(crate) mod units;
