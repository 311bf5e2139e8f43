//! The pure machines: fed what happened and the time (`now`, handed in), they decide and
//! return what to do. Nothing here reads a clock, spawns, signals or touches a file, so
//! every rule is tested inline with a fake clock. `core` uses only `config`, `error`
//! and `time` (`scripts/module-cycles` checks it).

pub mod alert;
pub(crate) mod alert_mail;
pub(crate) mod chain;
pub(crate) mod outcome;
pub mod resume;
pub(crate) mod signature;
pub(crate) mod supervisor;
