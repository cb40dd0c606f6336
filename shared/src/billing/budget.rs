//! The budget gate: a tenant whose budget is a hard cap cannot spend past it.
//!
//! Each month has one counter per tenant, `committed`: the cost of every
//! request served plus the reservations of those in flight. Before calling a
//! backend the gate reserves the request's largest possible cost with one
//! conditional add (`committed + cost <= cap`), so concurrent requests cannot
//! jointly pass the cap; after the call it settles the reservation to the real
//! cost (or releases it when nothing was served). Metering stays the ledger:
//! the counter is seeded from the metered month spend when a month starts being
//! gated, so turning a cap on mid-month counts what was already spent.

use std::sync::Arc;

use crate::billing::amounts::{delta, dollars, from_counter, saturating_counter, to_counter};
use crate::billing::metering::Meter;
use crate::error::{ApiError, ApiResult};
use crate::store::{Attrs, Cond, Item, Key, StoreError, Table, Update};
use crate::tenancy::tenants::Budget;

/// The month counters live a little over a year (for audit), then expire.
const COUNTER_TTL_SECS: i64 = 400 * 24 * 3600;

/// The month's counter of a tenant (`committed`: served plus reserved).
pub fn key(tenant_id: &str, month: &str) -> Key {
    Key::new(format!("BUDGET#{tenant_id}"), format!("MONTH#{month}"))
}

/// A reservation to settle once the request's real cost is known.
#[derive(Clone, Debug)]
pub struct Reservation {
    key: Key,
    reserved: u64,
}

impl Reservation {
    /// How much it holds, micro-dollars.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The counter it is held on.
    pub fn key(&self) -> &Key {
        &self.key
    }
}

#[derive(Clone)]
pub struct BudgetGate {
    table: Arc<dyn Table>,
    meter: Meter,
    /// Months whose counter this process knows to exist (tenant#month).
    seeded: moka::future::Cache<String, ()>,
}

impl BudgetGate {
    pub fn new(table: Arc<dyn Table>) -> Self {
        BudgetGate {
            meter: Meter::new(table.clone()),
            table,
            seeded: moka::future::Cache::new(100_000),
        }
    }

    /// Reserves `cost` micro-dollars of the tenant's month; `None` when the
    /// budget is not a hard cap (nothing to hold back). Over the cap: 429
    /// `insufficient_quota`.
    pub async fn reserve(
        &self,
        tenant_id: &str,
        month: &str,
        budget: &Budget,
        cost: u64,
    ) -> ApiResult<Option<Reservation>> {
        if !budget.hard_cap {
            return Ok(None);
        }
        let key = key(tenant_id, month);
        self.seed(tenant_id, month, &key).await?;
        let refused = || {
            ApiError::QuotaExceeded(format!(
            "You exceeded your monthly budget of {} (a hard cap): this request could cost up to {}. Raise the budget or wait for next month.",
            dollars(budget.monthly_micros),
            dollars(cost)
        ))
        };
        let cap = saturating_counter(budget.monthly_micros);
        let Ok(cost_i) = to_counter(cost, "the reservation") else {
            return Err(refused());
        };
        if cost_i > cap {
            return Err(refused());
        }
        match self
            .table
            .update(
                &Update::new(key.clone())
                    .add("committed", cost_i)
                    .when(Cond::AtMost {
                        attr: "committed".into(),
                        max: cap - cost_i,
                    }),
            )
            .await
        {
            Ok(_) => Ok(Some(Reservation {
                key,
                reserved: cost,
            })),
            Err(StoreError::ConditionFailed) => Err(refused()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a reservation by the real cost (`None`: nothing was served).
    pub async fn settle(&self, reservation: &Reservation, actual: Option<u64>) {
        let delta = match delta(actual.unwrap_or(0), reservation.reserved, "settlement") {
            Ok(0) => return,
            Ok(d) => d,
            Err(e) => {
                tracing::error!(key = ?reservation.key, error = %e, "budget reservation not settled");
                return;
            }
        };
        if let Err(e) = self
            .table
            .update(&Update::new(reservation.key.clone()).add("committed", delta))
            .await
        {
            // The counter keeps the reservation: the cap errs on the safe side.
            tracing::warn!(key = ?reservation.key, delta, error = %e, "budget reservation not settled");
        }
    }

    /// How much of the month is committed (served plus in flight), micro-dollars.
    pub async fn committed(&self, tenant_id: &str, month: &str) -> ApiResult<u64> {
        let item = self.table.get(&key(tenant_id, month)).await?;
        Ok(item.map_or(0, |i| from_counter(i.number("committed"))))
    }

    /// Creates the month's counter from the metered spend, once.
    async fn seed(&self, tenant_id: &str, month: &str, key: &Key) -> ApiResult<()> {
        let id = format!("{tenant_id}#{month}");
        if self.seeded.contains_key(&id) {
            return Ok(());
        }
        if self.table.get(key).await?.is_none() {
            let spent = self.meter.month_spend(tenant_id, month).await?;
            let spent = to_counter(spent, "the month's spend")
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mut attrs = Attrs::new();
            attrs.insert("committed".into(), spent.into());
            let mut item = Item::new(key.clone(), attrs);
            item.expires_at = Some(crate::store::now_secs() + COUNTER_TTL_SECS);
            match self.table.put(&item, &Cond::Absent).await {
                Ok(()) | Err(StoreError::ConditionFailed) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.seeded.insert(id, ()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Storage;

    fn capped(micros: u64) -> Budget {
        Budget {
            monthly_micros: micros,
            hard_cap: true,
            thresholds: vec![100],
        }
    }

    async fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::embedded(dir.path(), &crate::store::Resources::named("t"))
            .await
            .unwrap();
        (dir, storage)
    }

    #[tokio::test]
    async fn reservations_stop_at_the_cap_and_settle_to_the_real_cost() {
        let (_dir, storage) = storage().await;
        let gate = BudgetGate::new(storage.table.clone());
        let budget = capped(100);
        let r = gate
            .reserve("t1", "2026-11", &budget, 60)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            gate.reserve("t1", "2026-11", &budget, 60).await,
            Err(ApiError::QuotaExceeded(_))
        ));
        gate.settle(&r, Some(30)).await;
        assert_eq!(gate.committed("t1", "2026-11").await.unwrap(), 30);
        let r2 = gate
            .reserve("t1", "2026-11", &budget, 70)
            .await
            .unwrap()
            .unwrap();
        gate.settle(&r2, None).await;
        assert_eq!(gate.committed("t1", "2026-11").await.unwrap(), 30);
        // Other tenants and months are untouched; a soft budget reserves nothing.
        assert_eq!(gate.committed("t2", "2026-11").await.unwrap(), 0);
        let soft = Budget {
            hard_cap: false,
            ..capped(1)
        };
        assert!(gate
            .reserve("t1", "2026-11", &soft, 500)
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            gate.reserve("t1", "2026-11", &budget, 101).await,
            Err(ApiError::QuotaExceeded(_))
        ));
    }

    #[tokio::test]
    async fn a_newly_gated_month_starts_from_the_metered_spend() {
        let (_dir, storage) = storage().await;
        let meter = Meter::new(storage.table.clone());
        let at_ms = 1_795_000_000_000; // 2026-11-18
        let event = crate::billing::metering::UsageEvent {
            event_id: "e1".into(),
            tenant_id: "t1".into(),
            key_id: "k1".into(),
            model: "m".into(),
            model_version: "1".into(),
            inputs: 1,
            tokens: 10,
            completion_tokens: 0,
            requests: 1,
            cache_hit: false,
            cache_hits: 0,
            latency_ms: 1.0,
            overhead_ms: 0.25,
            compute_ms: 1,
            cost_micros: 90,
            at_ms,
            batch: false,
        };
        meter.fold(&event).await.unwrap();
        let month = &crate::billing::metering::month_of(at_ms);
        let gate = BudgetGate::new(storage.table.clone());
        assert!(matches!(
            gate.reserve("t1", month, &capped(100), 11).await,
            Err(ApiError::QuotaExceeded(_))
        ));
        assert!(gate
            .reserve("t1", month, &capped(100), 10)
            .await
            .unwrap()
            .is_some());
    }
}
