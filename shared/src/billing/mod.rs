//! Money: usage events and their sink, metering into aggregates, the budget gate,
//! cost alerts and their signed webhooks, and the checked arithmetic of amounts.

pub mod alerts;
pub mod amounts;
pub mod budget;
pub mod metering;
pub mod usage;
pub mod webhooks;
