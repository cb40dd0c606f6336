//! Metering folds usage events into aggregates exactly once on either adapter,
//! whatever the redeliveries, their order and their concurrency.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenantai::billing::metering::{parse_day, Folded, Meter, Record, UsageEvent, COUNTERS};
use tenantai::store::{Outgoing, Receive};

use crate::env::Env;

/// A small deterministic generator (the test needs no randomness crate).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

fn events(n: usize, rng: &mut Lcg) -> Vec<UsageEvent> {
    let day_ms = 86_400_000;
    let base = 1_795_478_400_000i64; // 2026-11-24T00:00Z
    (0..n)
        .map(|i| {
            let tokens = 1 + rng.next(500);
            // Some events stand for several merged calls.
            let requests = if i % 5 == 0 { 1 + rng.next(6) } else { 1 };
            UsageEvent {
                event_id: format!("evt-{i:04}"),
                tenant_id: format!("ten_{}", rng.next(3)),
                key_id: "key_1".into(),
                model: ["all-MiniLM-L6-v2", "tuned"][rng.next(2) as usize].into(),
                model_version: "1".into(),
                inputs: 1 + rng.next(8),
                tokens,
                completion_tokens: rng.next(3) * rng.next(200),
                requests,
                cache_hit: requests == 1 && rng.next(4) == 0,
                cache_hits: if requests > 1 {
                    rng.next(requests + 1)
                } else {
                    0
                },
                latency_ms: 3.5,
                overhead_ms: 0.25,
                compute_ms: rng.next(40),
                cost_micros: tenantai::billing::metering::cost_micros(tokens, 20).unwrap(),
                at_ms: base + (rng.next(3) as i64) * day_ms + rng.next(day_ms as u64) as i64,
                batch: false,
            }
        })
        .collect()
}

type Truth = BTreeMap<(String, String, String), [u64; 7]>;

fn truth(events: &[UsageEvent]) -> Truth {
    let mut t = Truth::new();
    for e in events {
        let c = t
            .entry((e.tenant_id.clone(), e.day(), e.model.clone()))
            .or_default();
        c[0] += e.requests;
        c[1] += e.inputs;
        c[2] += e.tokens;
        c[3] += e.completion_tokens;
        c[4] += e.hits();
        c[5] += e.cost_micros;
        c[6] += e.compute_ms;
    }
    t
}

pub async fn usage_folds_exactly_once(env: &Env) {
    let mut rng = Lcg(42);
    let evs = events(150, &mut rng);
    // Each event delivered 1 to 3 times, in shuffled order.
    let mut deliveries: Vec<UsageEvent> = Vec::new();
    for e in &evs {
        for _ in 0..=rng.next(3) {
            deliveries.push(e.clone());
        }
    }
    for i in (1..deliveries.len()).rev() {
        deliveries.swap(i, rng.next(i as u64 + 1) as usize);
    }
    let total = deliveries.len();
    let work = Arc::new(Mutex::new(deliveries));
    let meter = Meter::new(env.table().clone());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (work, meter) = (work.clone(), meter.clone());
        tasks.push(tokio::spawn(async move {
            let mut added = 0;
            loop {
                let Some(e) = work.lock().unwrap().pop() else {
                    return added;
                };
                if meter.fold(&e).await.unwrap() == Folded::Added {
                    added += 1;
                }
            }
        }));
    }
    let mut added = 0;
    for t in tasks {
        added += t.await.unwrap();
    }
    assert_eq!(
        added,
        evs.len(),
        "each event added once out of {total} deliveries"
    );
    // A crash after the fold but before the message was deleted: the redelivery adds nothing.
    assert_eq!(meter.fold(&evs[0]).await.unwrap(), Folded::Duplicate);

    let want = truth(&evs);
    let (from, to) = (
        parse_day("2026-11-24").unwrap(),
        parse_day("2026-11-26").unwrap(),
    );
    let mut got = Truth::new();
    let mut month_spend: BTreeMap<String, u64> = BTreeMap::new();
    for tenant in ["ten_0", "ten_1", "ten_2"] {
        for a in meter.aggregates(tenant, from, to).await.unwrap() {
            let c = COUNTERS.map(|k| a.counters[k]);
            got.insert((tenant.to_string(), a.day, a.model), c);
        }
        month_spend.insert(
            tenant.to_string(),
            meter.month_spend(tenant, "2026-11").await.unwrap(),
        );
    }
    assert_eq!(got, want);
    for tenant in ["ten_0", "ten_1", "ten_2"] {
        let cost: u64 = evs
            .iter()
            .filter(|e| e.tenant_id == tenant)
            .map(|e| e.cost_micros)
            .sum();
        assert_eq!(month_spend[tenant], cost, "{tenant}'s month spend");
    }
    // A date range selects days.
    let one_day = meter.aggregates("ten_0", to, to).await.unwrap();
    assert!(one_day.iter().all(|a| a.day == "2026-11-26"));
}

fn body(e: &UsageEvent) -> String {
    serde_json::to_string(e).unwrap()
}

/// One bad message never costs its neighbours: malformed events go to the
/// dead-letter queue (and count as handled), duplicates add nothing, and a
/// drained queue is left empty.
pub async fn batches_dead_letter_malformed_events_only(env: &Env) {
    let mut rng = Lcg(7);
    let evs = events(4, &mut rng);
    let (queue, dlq) = env.queue_with_dlq();
    let meter = Meter::new(env.table().clone());
    let mut empty_tenant = evs[1].clone();
    empty_tenant.tenant_id = String::new();
    let records = vec![
        Record {
            id: "m1".into(),
            body: body(&evs[0]),
        },
        Record {
            id: "m2".into(),
            body: "{\"event_id\": 3".into(),
        },
        Record {
            id: "m3".into(),
            body: body(&empty_tenant),
        },
        Record {
            id: "m4".into(),
            body: body(&evs[2]),
        },
        Record {
            id: "m5".into(),
            body: body(&evs[0]),
        },
    ];
    let outcome = meter.process(dlq.as_ref(), &records).await;
    assert_eq!(
        (outcome.added, outcome.duplicates, outcome.dead_lettered),
        (2, 1, 2),
        "{outcome:?}"
    );
    assert!(outcome.failed.is_empty(), "{outcome:?}");
    let dead = dlq
        .receive(&Receive {
            max: 10,
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
        })
        .await
        .unwrap();
    // Each dead letter holds the body unchanged and the reason it was refused.
    let letters: Vec<serde_json::Value> = dead
        .iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect();
    let mut bodies: Vec<String> = letters
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    let mut want = vec![records[1].body.clone(), records[2].body.clone()];
    want.sort();
    assert_eq!(bodies, want, "the malformed bodies, unchanged, in the DLQ");
    assert!(letters
        .iter()
        .all(|l| !l["reason"].as_str().unwrap().is_empty()));
    // Redriven to the usage queue as they are, they are judged by their bodies again.
    let redriven: Vec<Record> = dead
        .iter()
        .map(|m| Record {
            id: m.id.clone(),
            body: m.body.clone(),
        })
        .collect();
    let again = meter.process(dlq.as_ref(), &redriven).await;
    assert_eq!(again.dead_lettered, 2, "{again:?}");
    let twice = dlq
        .receive(&Receive {
            max: 10,
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
        })
        .await
        .unwrap();
    let mut rebodies: Vec<String> = twice
        .iter()
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(&m.body).unwrap()["body"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    rebodies.sort();
    assert_eq!(
        rebodies, want,
        "a redriven dead letter is not wrapped twice"
    );

    // Through the queue: everything received is folded and deleted.
    for e in &evs {
        queue.send(&Outgoing::new(body(e))).await.unwrap();
    }
    let mut received = 0;
    while received < evs.len() {
        let n = meter
            .drain_once(queue.as_ref(), dlq.as_ref(), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            n > 0,
            "the queue ran dry after {received} of {} messages",
            evs.len()
        );
        received += n;
    }
    assert_eq!(
        meter
            .drain_once(queue.as_ref(), dlq.as_ref(), Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    let day_range = (
        parse_day("2026-11-24").unwrap(),
        parse_day("2026-11-26").unwrap(),
    );
    let mut requests = 0;
    for tenant in ["ten_0", "ten_1", "ten_2"] {
        for a in meter
            .aggregates(tenant, day_range.0, day_range.1)
            .await
            .unwrap()
        {
            requests += a.counters["requests"];
        }
    }
    // evs[0] and evs[2] were folded by the batch; evs[1] and evs[3] only now.
    assert_eq!(requests, evs[..4].iter().map(|e| e.requests).sum::<u64>());
}
