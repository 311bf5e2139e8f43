//! The fleet's store: PostgreSQL, shared by every host of a fleet (`[store]` in the
//! config). Only this folder names tokio-postgres, as only `store/` names rusqlite.
//!
//! - `conn`: one connection (our runtime, socket, TLS; a client-side timeout per call);
//! - `guard`: SCRAM only unless the server is authenticated by verified TLS;
//! - `schema`: the `run_chain` schema, created and migrated by run-chain, and the
//!   refusal to touch a database that is not run-chain's.
//! - `write`: the fenced write side (`Pg: StoreWrite`), driven by the DB thread;

pub(crate) mod conn;
pub(crate) mod guard;
pub(crate) mod import;
pub(crate) mod lease;
pub(crate) mod outbox;
pub(crate) mod reader;
pub(crate) mod schema;
pub(crate) mod slots;
pub(crate) mod write;
