//! The request path to the models: the registry and routing, backends, circuit breakers,
//! the answer cache, rate limits, the embeddings request, the outbound egress policy and
//! request metrics.

pub mod backend;
pub mod breaker;
pub mod cache;
pub mod chat;
pub mod chat_stream;
pub mod egress;
pub mod embeddings;
pub mod models;
pub mod pipeline;
pub mod ratelimit;
pub mod telemetry;
pub mod upstream;
