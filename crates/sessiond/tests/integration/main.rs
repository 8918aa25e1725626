//! End-to-end tests of the real `sessiond` binary, driven through the client library.
//! One test binary (fast linking) with a shared harness in `common/`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod agent_cache;
mod agent_flow;
mod browser;
mod cluster;
mod durability;
mod errors;
mod limits;
mod nginx;
