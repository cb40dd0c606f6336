//! Tenants and who may act for them: tenant records and tiers, API keys, JWTs, the
//! authenticator, the audit log, secrets sealed at rest, and the checks on text they hold.

pub mod audit;
pub mod auth;
pub mod jwt;
pub mod keys;
pub mod secrets;
pub mod tenants;
pub mod text;
