//! JWT auth: RS256/ES256 against a JWKS URL; iss/aud/exp/nbf checked; `alg:
//! none`, HS/RS confusion and unknown kids refused.

use axum::http::Method;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tenantai::app::Config;
use tenantai::store::now_secs;
use tenantai::tenancy::jwt::JwtConfig;

use crate::harness::Harness;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// Serves the test JWKS on a loopback port; returns its URL.
async fn jwks_server() -> String {
    let jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || async move { axum::Json(jwks) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/.well-known/jwks.json")
}

fn claims(tenant: &str) -> Value {
    let now = now_secs();
    json!({"iss": "https://idp.test", "aud": "tenantai", "sub": "user-7", "org": tenant, "iat": now, "nbf": now - 5, "exp": now + 600})
}

fn sign(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec-private.pem")).unwrap(),
        // The HS/RS confusion: the RSA public key used as an HMAC secret.
        _ => EncodingKey::from_secret(&fixture("rsa-public.pem")),
    };
    encode(&header, claims, &key).unwrap()
}

async fn harness() -> Harness {
    let config = Config {
        jwt: Some(JwtConfig {
            jwks_url: jwks_server().await,
            issuer: "https://idp.test".into(),
            audience: "tenantai".into(),
            tenant_claim: "org".into(),
        }),
        ..Config::default()
    };
    Harness::with_config(config).await
}

#[tokio::test]
async fn signed_tokens_from_the_jwks_are_accepted() {
    let h = harness().await;
    let t = h.tenant("Acme", "pro").await;
    for (alg, kid) in [(Algorithm::RS256, "rsa-1"), (Algorithm::ES256, "ec-1")] {
        let token = sign(alg, kid, &claims(&t));
        h.call(Method::GET, "/v1/models", Some(&token), None)
            .await
            .ok();
    }
    let ctx = h
        .app
        .auth
        .authenticate(&sign(Algorithm::ES256, "ec-1", &claims(&t)))
        .await
        .unwrap();
    assert_eq!(
        (ctx.tenant_id.as_str(), ctx.key_id.as_str()),
        (t.as_str(), "jwt:user-7")
    );
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let h = harness().await;
    let t = h.tenant("Acme", "pro").await;
    let now = now_secs();
    let with = |k: &str, v: Value| {
        let mut c = claims(&t);
        c[k] = v;
        c
    };
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims(&t).to_string())
    );
    let cases = [
        (
            "expired",
            sign(Algorithm::RS256, "rsa-1", &with("exp", json!(now - 3600))),
        ),
        (
            "not yet valid",
            sign(Algorithm::RS256, "rsa-1", &with("nbf", json!(now + 3600))),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                "rsa-1",
                &with("iss", json!("https://evil.test")),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                "rsa-1",
                &with("aud", json!("someone-else")),
            ),
        ),
        (
            "unknown tenant",
            sign(Algorithm::RS256, "rsa-1", &with("org", json!("ten_ghost"))),
        ),
        (
            "no tenant claim",
            sign(Algorithm::RS256, "rsa-1", &with("org", Value::Null)),
        ),
        ("alg none", none_token),
        (
            "HS256 with the RSA public key",
            sign(Algorithm::HS256, "rsa-1", &claims(&t)),
        ),
        ("unknown kid", sign(Algorithm::RS256, "rsa-9", &claims(&t))),
        (
            "RS256 under the EC key's kid",
            sign(Algorithm::RS256, "ec-1", &claims(&t)),
        ),
        ("tampered payload", {
            let good = sign(Algorithm::RS256, "rsa-1", &claims(&t));
            let parts: Vec<_> = good.split('.').collect();
            let forged = URL_SAFE_NO_PAD.encode(with("org", json!("ten_other")).to_string());
            format!("{}.{}.{}", parts[0], forged, parts[2])
        }),
        ("garbage", "a.b.c".to_string()),
    ];
    for (why, token) in cases {
        let r = h.call(Method::GET, "/v1/models", Some(&token), None).await;
        assert_eq!(r.status.as_u16(), 401, "{why}: {}", r.body);
        r.error(401);
    }
}
