//! Running a chain: the driver loop (the one reader of the clock, which feeds the
//! [`crate::core`] machines and carries out their actions) and the OS around a run:
//! starting it ([`spawn`], `process`), its output, the concurrency
//! slots, and the guardian that ends a run when run-chain dies.

pub(crate) mod ctl;
pub(crate) mod driver;
pub(crate) mod guardian;
pub(crate) mod output;
pub(crate) mod process;
pub(crate) mod running;
pub(crate) mod slots;
pub mod spawn;
