//! run-chain: run an ordered chain of commands continuously, with a cooldown after
//! each, one supervised process per chain.
//!
//! The pure core (`config`, `chain`, `outcome`, `state::resume`, `output::Tail`) makes
//! every decision from "what happened" and "what time it is"; the edges (`driver`,
//! `process`, `pidfile`, `guardian`, `signals`, `sys`) touch the OS and stay thin.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod alert;
pub mod alert_mail;
pub mod app;
pub mod chain;
pub mod cli;
pub mod config;
pub mod driver;
pub mod error;
pub mod exporter;
pub mod groups;
pub mod guardian;
pub mod holders;
pub mod mailer;
pub mod metrics;
pub mod outcome;
pub mod output;
pub mod pidfile;
pub mod process;
pub mod recorder;
pub mod report;
pub mod root;
pub mod signals;
pub mod signature;
pub mod spawn;
pub mod state;
pub mod store;
pub mod sys;
pub mod time;
