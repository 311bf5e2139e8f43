//! The fleet tests' harness: real PostgreSQL and PgBouncer servers (`pg`), the ledger of task
//! starts and ends that judges overlap independently of the record store (`ledger`), and
//! network namespaces to partition a host off the database (`netns`). Each test binary uses a
//! part of it.
#![allow(dead_code)]

pub mod ledger;
pub mod netns;
pub mod pg;
