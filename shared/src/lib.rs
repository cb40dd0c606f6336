//! tenantai: the core library of a serverless, multi-tenant AI backend.
//!
//! Domain code talks to three storage ports ([`store::Table`], [`store::Queue`],
//! [`store::Blobs`]) with DynamoDB/SQS/S3 semantics. Each port has two adapters:
//! the AWS one ([`store::aws`]) and the embedded one ([`store::embedded`]) that
//! runs a whole deployment in one process on a laptop.

pub mod app;
pub mod batch;
pub mod billing;
pub mod error;
pub mod gateway;
pub mod http;
pub mod lambda;
pub mod limits;
pub mod ops;
pub mod records;
pub mod store;
pub mod tenancy;
