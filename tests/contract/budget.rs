//! The budget gate's reservations are atomic on either adapter: concurrent
//! requests never commit past a hard cap.

use std::sync::Arc;

use tenantai::billing::budget::BudgetGate;
use tenantai::error::ApiError;
use tenantai::tenancy::tenants::Budget;

use crate::env::Env;

pub async fn hard_cap_holds_under_concurrent_reservations(env: &Env) {
    let gate = Arc::new(BudgetGate::new(env.table().clone()));
    let budget = Budget {
        monthly_micros: 100,
        hard_cap: true,
        thresholds: vec![100],
    };
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (gate, budget) = (gate.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            match gate.reserve("ten_cap", "2026-11", &budget, 7).await {
                Ok(r) => r.is_some(),
                Err(ApiError::QuotaExceeded(_)) => false,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    // 14 × 7 = 98 fits under 100; a 15th would not.
    assert_eq!(admitted, 14);
    assert_eq!(gate.committed("ten_cap", "2026-11").await.unwrap(), 98);
    // Settling a reservation down frees room for the next request.
    let r = gate
        .reserve("ten_cap", "2026-11", &budget, 2)
        .await
        .unwrap()
        .unwrap();
    gate.settle(&r, Some(1)).await;
    assert_eq!(gate.committed("ten_cap", "2026-11").await.unwrap(), 99);
    assert!(gate
        .reserve("ten_cap", "2026-11", &budget, 1)
        .await
        .unwrap()
        .is_some());
    assert!(matches!(
        gate.reserve("ten_cap", "2026-11", &budget, 1).await,
        Err(ApiError::QuotaExceeded(_))
    ));
}
