//! The front door through its public HTTP API, in-process: the axum routers on
//! the embedded adapters, called as a client would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod admin;
mod auth;
mod batches;
mod breaker;
mod chat;
mod console;
mod embeddings;
mod events;
mod harness;
mod isolation;
mod jwt;
mod limits;
mod malformed;
mod metering;
mod ops;
mod ratelimit;
mod routing;
mod sagemaker;
#[path = "../common/tables.rs"]
mod tables;
#[path = "../common/webhook.rs"]
mod webhook;
mod worker;
