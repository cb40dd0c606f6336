//! The storage contract: one set of cases, run against the embedded adapters and
//! against the AWS adapters (on the emulator that `scripts/test.sh` starts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod alerts;
mod blobs;
mod budget;
mod env;
mod metering;
mod ops;
mod processes;
mod queue;
mod ratelimit;
mod secrets;
mod table;
#[path = "../common/tables.rs"]
mod tables;
mod tenant_scoped;
#[path = "../common/webhook.rs"]
mod webhook;

/// Instantiates every case once per adapter.
macro_rules! contract {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let env = crate::env::embedded().await;
                    crate::$module::$case(&env).await;
                }
            )*
        }
        mod aws {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(env) = crate::env::aws().await {
                        crate::$module::$case(&env).await;
                    }
                }
            )*
        }
    };
}

contract! {
    table::put_get_round_trip,
    table::conditional_put_conflicts,
    table::version_checks,
    table::concurrent_adds_are_exact,
    table::add_with_conditions,
    table::query_pages_both_directions,
    table::expired_items_read_as_absent,
    table::failed_transaction_changes_nothing,
    table::transaction_limits,
    table::scan_segments_cover_every_item_once,
    table::batch_writes_put_and_delete,
    queue::send_receive_delete,
    queue::visibility_timeout_then_redelivery,
    queue::dead_letter_after_max_receives,
    queue::change_visibility,
    queue::long_poll_returns_when_a_message_arrives,
    queue::delayed_messages,
    queue::batch_limits,
    blobs::round_trip_head_delete,
    blobs::large_object_streams,
    blobs::range_reads,
    blobs::listing_pages,
    blobs::keys_that_escape_are_rejected,
    ratelimit::admitted_requests_never_exceed_the_limit,
    ratelimit::hosts_leasing_tickets_never_exceed_the_limit,
    ratelimit::token_limits_refuse_and_settle,
    ratelimit::a_burst_on_an_empty_lease_costs_a_few_claims,
    ratelimit::busy_leases_claim_ahead_for_the_next_window,
    metering::usage_folds_exactly_once,
    metering::batches_dead_letter_malformed_events_only,
    budget::hard_cap_holds_under_concurrent_reservations,
    alerts::alerts_fire_once_under_concurrent_runs,
    secrets::sealed_secrets_open_only_in_their_context,
    secrets::upstream_keys_are_read_from_their_secret,
    ops::backup_and_restore_round_trip,
    ops::corrupt_or_missing_parts_are_refused_before_writing,
    ops::interrupted_restore_resumes,
    ops::retention_keeps_daily_and_monthly,
    ops::erasure_leaves_nothing_naming_the_tenant,
}

/// Tenant-scoped credentials (STS AssumeRole per tenant) exist on the AWS adapters only.
mod aws_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tenant_items_travel_with_the_tenants_session() {
        if let Some(env) = crate::env::aws().await {
            crate::tenant_scoped::tenant_items_travel_with_the_tenants_session(&env).await;
        }
    }
}
