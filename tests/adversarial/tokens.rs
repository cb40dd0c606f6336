//! Tokens a client or a network hands us, property-tested: JWTs (any string is
//! a clean 401; a valid token with any one character changed, its algorithm
//! swapped or its times past is refused) and webhook signatures (any header and
//! body refuse cleanly; a signature round-trips; any changed body byte,
//! secret or header value is refused).

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};
use tenantai::billing::alerts::{sign, verify};
use tenantai::store::now_secs;
use tenantai::tenancy::jwt::{JwtConfig, JwtVerifier};

use crate::net::runtime;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// A verifier on the test JWKS (served on loopback for the whole run).
fn verifier() -> &'static Arc<JwtVerifier> {
    static V: OnceLock<Arc<JwtVerifier>> = OnceLock::new();
    V.get_or_init(|| {
        runtime().block_on(async {
            let jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
            let app = axum::Router::new().route(
                "/jwks.json",
                axum::routing::get(move || async move { axum::Json(jwks) }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            JwtVerifier::new(JwtConfig {
                jwks_url: url,
                issuer: "https://idp.test".into(),
                audience: "tenantai".into(),
                tenant_claim: "org".into(),
            })
            .unwrap()
        })
    })
}

fn claims(exp_offset: i64, nbf_offset: i64) -> Value {
    let now = now_secs();
    json!({"iss": "https://idp.test", "aud": "tenantai", "sub": "u", "org": "t1",
           "iat": now, "nbf": now + nbf_offset, "exp": now + exp_offset})
}

fn signed(rsa: bool, claims: &Value) -> String {
    let (alg, kid, key) = if rsa {
        let key = EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap();
        (Algorithm::RS256, "rsa-1", key)
    } else {
        let key = EncodingKey::from_ec_pem(&fixture("ec-private.pem")).unwrap();
        (Algorithm::ES256, "ec-1", key)
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, &key).unwrap()
}

/// A valid token of each kind, signed once (RSA signing is slow unoptimised).
fn valid(rsa: bool) -> &'static str {
    static TOKENS: OnceLock<(String, String)> = OnceLock::new();
    let (r, e) = TOKENS.get_or_init(|| {
        (
            signed(true, &claims(3600, -5)),
            signed(false, &claims(3600, -5)),
        )
    });
    if rsa {
        r
    } else {
        e
    }
}

/// Verifies `token`: `Ok` when accepted, else the refusal's status (a 401 is
/// the only clean one).
fn check(token: &str) -> Result<(), u16> {
    runtime()
        .block_on(verifier().verify(token))
        .map(|_| ())
        .map_err(|e| e.status().as_u16())
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Strings shaped more or less like JWTs.
fn any_token() -> impl Strategy<Value = String> {
    let seg = "[A-Za-z0-9_=+/-]{0,40}";
    prop_oneof![
        "\\PC{0,120}",
        (seg, seg, seg).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
        ("\\PC{0,60}", "\\PC{0,60}", seg).prop_map(|(h, p, s)| format!(
            "{}.{}.{s}",
            b64(&h),
            b64(&p)
        )),
        (
            prop::sample::select(vec!["rsa-1", "ec-1", "nope", ""]),
            prop::sample::select(vec!["RS256", "ES256", "HS256", "none", "PS256", "x"]),
            "\\PC{0,60}",
            seg
        )
            .prop_map(|(kid, alg, p, s)| {
                let h = json!({"alg": alg, "kid": kid}).to_string();
                format!("{}.{}.{s}", b64(&h), b64(&p))
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_string_as_a_jwt_is_a_clean_401(token in any_token()) {
        prop_assert_eq!(check(&token), Err(401));
    }

    #[test]
    fn a_valid_jwt_with_any_character_changed_is_refused(
        rsa: bool,
        at: prop::sample::Index,
        to in prop_oneof!["[A-Za-z0-9_=+/.-]", "\\PC"],
    ) {
        let token = valid(rsa);
        prop_assert_eq!(check(token), Ok(()));
        let i = at.index(token.len());
        let was = &token[i..=i];
        prop_assume!(to != was);
        let changed = format!("{}{to}{}", &token[..i], &token[i + 1..]);
        prop_assert_eq!(check(&changed), Err(401), "{} at {}", to, i);
    }

}

proptest! {
    // Each case signs two tokens.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn swapped_algorithms_and_past_times_are_refused(
        rsa: bool,
        alg in prop::sample::select(vec!["none", "HS256", "HS512", "RS384", "ES384", "PS256", "EdDSA"]),
        late in 31i64..1_000_000,
    ) {
        let token = valid(rsa);
        let mut parts = token.splitn(3, '.').map(str::to_string).collect::<Vec<_>>();
        let kid = if rsa { "rsa-1" } else { "ec-1" };
        parts[0] = b64(&json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string());
        prop_assert_eq!(check(&parts.join(".")), Err(401));
        // Expired past the leeway, or not valid until past it.
        prop_assert_eq!(check(&signed(rsa, &claims(-late, -late - 600))), Err(401));
        prop_assert_eq!(check(&signed(rsa, &claims(late + 600, late))), Err(401));
    }
}

const WINDOW: i64 = 300;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_signature_header_and_body_refuse_cleanly(
        header in prop_oneof![
            "\\PC{0,80}",
            (any::<i64>(), "[0-9a-fA-F]{0,70}").prop_map(|(t, v)| format!("t={t},v1={v}")),
            (any::<i64>(), "[ ,=tv1a-f0-9]{0,40}").prop_map(|(t, rest)| format!("t={t}{rest}")),
        ],
        body in prop::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
    ) {
        prop_assert!(verify("secret", &header, &body, now, WINDOW).is_err());
    }

    #[test]
    fn signatures_round_trip_and_any_change_is_refused(
        secret in "\\PC{1,40}",
        body in prop::collection::vec(any::<u8>(), 1..200),
        now in 0i64..4_000_000_000,
        skew in -WINDOW..=WINDOW,
        at: prop::sample::Index,
        flip in 1u8..=255,
        hat: prop::sample::Index,
        to in "[0-9a-z,=. ]",
    ) {
        let header = sign(&secret, now + skew, &body);
        prop_assert_eq!(verify(&secret, &header, &body, now, WINDOW), Ok(()));
        let mut changed = body.clone();
        let i = at.index(body.len());
        changed[i] ^= flip;
        prop_assert!(verify(&secret, &header, &changed, now, WINDOW).is_err());
        let other = format!("{secret}x");
        prop_assert!(verify(&other, &header, &body, now, WINDOW).is_err());
        let j = hat.index(header.len());
        let forged = format!("{}{to}{}", &header[..j], &header[j + 1..]);
        if forged != header && verify(&secret, &forged, &body, now, WINDOW).is_ok() {
            // Only a change that leaves the timestamp and tag as they were, or
            // moves the timestamp within the window without touching the tag,
            // can verify: the latter would mean the MAC ignores the time.
            prop_assert!(forged.to_ascii_lowercase() == header, "{} verified", forged);
        }
        // Outside the replay window the same delivery is stale.
        let late = now + skew + WINDOW + 1;
        prop_assert!(verify(&secret, &header, &body, late, WINDOW).is_err());
    }
}
