//! Who owns a chain: the lock on `CHAIN.pid` ([`pidfile`]), the hand-over from a running
//! instance to a new one (`handover`), and the lock holders of many chains at once for
//! the readers (`holders`).

pub(crate) mod handover;
pub(crate) mod holders;
pub mod pidfile;
