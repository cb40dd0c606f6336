//! Outbound requests a tenant or admin can aim (SSRF): webhook URLs are judged
//! when saved, every address is judged again at connect time (DNS rebinding),
//! redirects are not followed, and private targets open only by explicit setting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use proptest::prelude::*;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::json;
use tenantai::billing::alerts::{CostAlerts, Notifier, Retry};
use tenantai::billing::metering::UsageEvent;
use tenantai::gateway::egress::{blocked, Egress, EgressError, EgressPolicy, GuardedResolver};

use crate::harness::Harness;
use crate::net::recorder;

/// URLs no webhook may be set to by default.
const REFUSED: &[&str] = &[
    "https://127.0.0.1/hook",
    "https://127.1.2.3/hook",
    "https://localhost/hook",
    "https://LOCALHOST./hook",
    "https://api.localhost/hook",
    "https://[::1]/hook",
    "https://0.0.0.0/hook",
    "https://0/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://169.254.170.2/v2/credentials",
    "https://[fd00:ec2::254]/",
    "https://10.0.0.8/hook",
    "https://172.16.5.4/hook",
    "https://192.168.0.1/hook",
    "https://100.64.0.1/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:169.254.169.254]/hook",
    "https://[64:ff9b::a9fe:a9fe]/hook",
    "https://[2002:7f00:1::]/hook",
    "https://2130706433/hook",
    "https://0x7f000001/hook",
    "https://0177.0.0.1/hook",
    "https://127.1/hook",
    "https://224.0.0.1/hook",
    "https://255.255.255.255/hook",
    "https://example.com@127.0.0.1/hook",
    "https://user:pass@hooks.example.com/hook",
    "http://hooks.example.com/hook",
    "ftp://hooks.example.com/hook",
    "file:///etc/passwd",
    "gopher://hooks.example.com/",
    "hooks.example.com/hook",
    "https://hooks example.com/hook",
];

#[tokio::test]
async fn webhook_urls_aimed_inside_are_refused_when_saved() {
    let h = Harness::new().await;
    let t = h.tenant("Aimer", "pro").await;
    for url in REFUSED {
        let r = h
            .admin(
                Method::PATCH,
                &format!("/tenants/{t}"),
                Some(json!({ "alert_webhook_url": url })),
            )
            .await;
        r.error(400);
        assert_eq!(r.body["error"]["param"], "alert_webhook_url", "{url}");
    }
    let long = format!("https://hooks.example.com/{}", "a".repeat(2100));
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({ "alert_webhook_url": long })),
    )
    .await
    .error(400);
    // Nothing was stored, and a public https URL is accepted.
    let got = h.admin(Method::GET, &format!("/tenants/{t}"), None).await;
    assert!(got.ok().get("alert_webhook").is_none(), "{}", got.body);
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"alert_webhook_url": "https://hooks.example.com/tenantai"})),
    )
    .await
    .ok();
}

#[test]
fn the_url_parser_normalises_numeric_hosts_before_they_are_judged() {
    let policy = EgressPolicy::default();
    for url in [
        "https://2130706433/",
        "https://0x7f.1/",
        "https://017700000001/",
    ] {
        match policy.check_url(url) {
            Err(EgressError::Blocked { host, .. }) => assert_eq!(host, "127.0.0.1", "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    // With private addresses open, loopback and http pass; metadata does not.
    let open = EgressPolicy {
        allow_private: true,
        ..EgressPolicy::default()
    };
    assert!(open.check_url("http://127.0.0.1:8080/hook").is_ok());
    assert!(open.check_url("https://[fd00:ec2::254]/").is_err());
    assert!(open.check_url("http://169.254.169.254/").is_err());
    assert!(open.check_url("https://a:b@127.0.0.1/").is_err());
}

/// Answers every name with fixed addresses (a DNS server that rebinds).
struct FixedDns(Vec<IpAddr>);

impl Resolve for FixedDns {
    fn resolve(&self, _name: Name) -> Resolving {
        let addrs: Vec<SocketAddr> = self.0.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
        Box::pin(async move { Ok(Box::new(addrs.into_iter()) as Addrs) })
    }
}

#[tokio::test]
async fn names_that_resolve_inside_are_dropped_at_connect_time() {
    let guard = GuardedResolver::new(
        Arc::new(FixedDns(vec![
            "127.0.0.1".parse().unwrap(),
            "8.8.8.8".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
            "169.254.169.254".parse().unwrap(),
        ])),
        false,
    );
    let kept: Vec<IpAddr> = guard
        .resolve(Name::from_str("hooks.example.com").unwrap())
        .await
        .unwrap()
        .map(|a| a.ip())
        .collect();
    assert_eq!(kept, vec!["8.8.8.8".parse::<IpAddr>().unwrap()]);
    let only_inside = GuardedResolver::new(
        Arc::new(FixedDns(vec!["127.0.0.1".parse().unwrap()])),
        false,
    );
    let err = only_inside
        .resolve(Name::from_str("rebind.example.com").unwrap())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("loopback"), "{err}");

    // Through the client: a name saved as public, answering loopback now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let egress = Egress::with_resolver(
        EgressPolicy::default(),
        Arc::new(FixedDns(vec![
            Ipv4Addr::LOCALHOST.into(),
            Ipv6Addr::LOCALHOST.into(),
        ])),
    )
    .unwrap();
    let sent = egress
        .post(&format!("https://rebind.example.com:{port}/hook"))
        .unwrap()
        .send()
        .await;
    let err = sent.err().unwrap();
    assert!(
        tenantai::gateway::egress::describe(&err).contains("not reachable"),
        "{err}"
    );
    assert!(
        listener.accept().is_err(),
        "nothing may connect to the loopback listener"
    );
}

/// A usage event of `cost` micro-dollars for `tenant`, now.
pub fn spend_event(tenant: &str, cost: u64) -> UsageEvent {
    UsageEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant.into(),
        key_id: "key_x".into(),
        model: "m".into(),
        model_version: "1".into(),
        requests: 1,
        inputs: 1,
        tokens: 1,
        completion_tokens: 0,
        cache_hit: false,
        cache_hits: 0,
        latency_ms: 1.0,
        overhead_ms: 0.25,
        compute_ms: 1,
        cost_micros: cost,
        at_ms: tenantai::store::now_millis(),
        batch: false,
    }
}

/// A tenant whose budget the month's spend has crossed, with its webhook at `url`
/// (saved while private addresses were open); returns its id.
async fn alerted_tenant(h: &Harness, url: &str) -> String {
    let t = h.tenant("Alerted", "pro").await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"monthly_budget_micros": 100, "alert_webhook_url": url})),
    )
    .await
    .ok();
    h.app.meter.fold(&spend_event(&t, 90)).await.unwrap();
    t
}

fn alerts(h: &Harness, notifier: Notifier) -> CostAlerts {
    CostAlerts::new(
        h.app.storage.table.clone(),
        h.app.config.tiers.clone(),
        notifier,
    )
}

fn quick() -> Retry {
    Retry {
        attempts: 2,
        first_delay: std::time::Duration::from_millis(10),
    }
}

#[tokio::test]
async fn alerts_are_not_delivered_inside_unless_private_egress_is_opened() {
    let h = Harness::with_private_egress().await;
    let (url, got) = recorder(StatusCode::NO_CONTENT, None).await;
    alerted_tenant(&h, &url).await;
    // The default policy (as in `tenantai dev` without --allow-private-egress).
    let mut rules = h.app.config.webhook_rules();
    rules.egress = EgressPolicy::default();
    let denied = alerts(&h, Notifier::new(quick(), rules).unwrap());
    let summary = denied.run(time::OffsetDateTime::now_utc()).await.unwrap();
    assert!(summary.failed >= 1 && summary.sent == 0, "{summary:?}");
    assert_eq!(got.count(), 0, "a signed alert reached loopback");
    // Opened explicitly, the same alert is delivered (the claim was given back).
    let opened = alerts(
        &h,
        Notifier::new(quick(), h.app.config.webhook_rules()).unwrap(),
    );
    let summary = opened.run(time::OffsetDateTime::now_utc()).await.unwrap();
    assert!(summary.sent >= 1, "{summary:?}");
    assert!(got.count() >= 1);
}

#[tokio::test]
async fn a_rebinding_name_cannot_carry_an_alert_inside() {
    let h = Harness::new().await;
    let (url, got) = recorder(StatusCode::NO_CONTENT, None).await;
    let port = url.rsplit(':').next().unwrap().trim_end_matches("/hook");
    // Saved as a public https name (accepted)...
    let t = h.tenant("Rebound", "pro").await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"monthly_budget_micros": 100,
                     "alert_webhook_url": format!("https://hooks.rebind.example:{port}/hook")})),
    )
    .await
    .ok();
    h.app.meter.fold(&spend_event(&t, 90)).await.unwrap();
    // ...that now resolves to loopback.
    let egress = Egress::with_resolver(
        EgressPolicy::default(),
        Arc::new(FixedDns(vec![Ipv4Addr::LOCALHOST.into()])),
    )
    .unwrap();
    let notifier = Notifier::with_egress(quick(), h.app.config.webhook_rules(), egress);
    let summary = alerts(&h, notifier)
        .run(time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(summary.failed >= 1 && summary.sent == 0, "{summary:?}");
    assert_eq!(got.count(), 0);
}

#[tokio::test]
async fn webhook_redirects_are_not_followed() {
    let h = Harness::with_private_egress().await;
    let (target, reached) = recorder(StatusCode::NO_CONTENT, None).await;
    for status in [
        StatusCode::FOUND,
        StatusCode::MOVED_PERMANENTLY,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ] {
        let (url, first) = recorder(status, Some(target.clone())).await;
        alerted_tenant(&h, &url).await;
        let notifier = Notifier::new(quick(), h.app.config.webhook_rules()).unwrap();
        let summary = alerts(&h, notifier)
            .run(time::OffsetDateTime::now_utc())
            .await
            .unwrap();
        assert!(summary.failed >= 1, "{status}: {summary:?}");
        assert!(first.count() >= 1, "{status}");
        assert_eq!(reached.count(), 0, "{status} was followed");
    }
}

/// Any IPv4 address in a blocked range, bare or in an IPv6 form that carries it.
fn inside_v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(127, b, c, d)),
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(10, b, c, d)),
        (16u8..32, any::<[u8; 2]>()).prop_map(|(b, [c, d])| Ipv4Addr::new(172, b, c, d)),
        any::<[u8; 2]>().prop_map(|[c, d]| Ipv4Addr::new(192, 168, c, d)),
        any::<[u8; 2]>().prop_map(|[c, d]| Ipv4Addr::new(169, 254, c, d)),
        (64u8..128, any::<[u8; 2]>()).prop_map(|(b, [c, d])| Ipv4Addr::new(100, b, c, d)),
        any::<[u8; 3]>().prop_map(|[b, c, d]| Ipv4Addr::new(0, b, c, d)),
        (224u8..=255, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| Ipv4Addr::new(a, b, c, d)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn blocked_ranges_stay_blocked_in_every_form(v4 in inside_v4()) {
        let [a, b, c, d] = v4.octets();
        let forms = [
            IpAddr::V4(v4),
            IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))),
            IpAddr::V6(Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]), 0, 0, 0, 0, 1)),
        ];
        for ip in forms {
            prop_assert!(blocked(ip, false).is_some(), "{ip}");
        }
        // The URL form of the address is refused too.
        let policy = EgressPolicy::default();
        for url in [
            format!("https://{v4}/x"),
            format!("https://[{}]/x", v4.to_ipv6_mapped()),
            format!("https://{}/x", u32::from(v4)),
        ] {
            let refused = policy.check_url(&url).is_err();
            prop_assert!(refused, "{}", url);
        }
    }

    #[test]
    fn public_addresses_pass(a in 1u8..=223, b: u8, c: u8, d: u8) {
        let ip = Ipv4Addr::new(a, b, c, d);
        let special = matches!((a, b, c), (10 | 127, _, _) | (172, 16..=31, _) | (192, 168, _)
            | (169, 254, _) | (100, 64..=127, _) | (192, 0, 0 | 2) | (198, 18..=19, _)
            | (198, 51, 100) | (203, 0, 113));
        prop_assert_eq!(blocked(IpAddr::V4(ip), false).is_none(), !special, "{}", ip);
    }
}
