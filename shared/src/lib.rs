//! tenantai: the core library of a serverless, multi-tenant AI backend.
//!
//! Domain code talks to three storage ports ([`store::Table`], [`store::Queue`],
//! [`store::Blobs`]) with DynamoDB/SQS/S3 semantics. Each port has two adapters:
//! the AWS one ([`store::aws`]) and the embedded one ([`store::embedded`]) that
//! runs a whole deployment in one process on a laptop.

pub mod alerts;
pub mod amounts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod egress;
pub mod embeddings;
pub mod error;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod lambda;
pub mod metering;
pub mod models;
pub mod ops;
pub mod ratelimit;
pub mod records;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod text;
pub mod usage;
pub mod webhooks;
