//! The adversarial suite: tenantai attacked through its public surfaces, one
//! module per class of attack. Each class that once broke (outbound requests a
//! tenant or admin can aim, money and limit arithmetic, the hard cap, secrets,
//! text reaching a terminal, time limits) and each that held (cross-tenant
//! reads, authentication tricks, malformed bodies) has table-driven cases and
//! property-based ones, so a regression in any of them fails here.
//!
//! Run it alone with `./scripts/test.sh -p tenantai-tests --test adversarial`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod auth;
mod egress;
mod forms;
mod hardcap;
#[path = "../api/harness.rs"]
mod harness;
mod isolation;
mod limits;
mod malformed;
mod money;
mod net;
mod secrets;
mod text;
mod timeouts;
mod tokens;
#[path = "../common/webhook.rs"]
mod webhook;
#[path = "../api/worker.rs"]
mod worker;
