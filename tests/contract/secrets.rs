//! The key vaults behind secrets at rest: a local key file (embedded) and a KMS
//! key (the emulator) seal and open alike, bound to their context.

use crate::env::Env;

pub async fn sealed_secrets_open_only_in_their_context(env: &Env) {
    let secrets = env.secrets().await;
    let sealed = secrets
        .seal("whsec_contract", "tenant:t1:alert_webhook")
        .await
        .unwrap();
    let kind = if env.is_aws() { "kms" } else { "local" };
    assert!(sealed.starts_with(&format!("tsec1:{kind}:")), "{sealed}");
    assert!(!sealed.contains("whsec_contract"));
    assert_eq!(
        secrets
            .open(&sealed, "tenant:t1:alert_webhook")
            .await
            .unwrap(),
        "whsec_contract"
    );
    assert!(secrets
        .open(&sealed, "tenant:t2:alert_webhook")
        .await
        .is_err());
    // Each seal has its own data key and nonce.
    let again = secrets
        .seal("whsec_contract", "tenant:t1:alert_webhook")
        .await
        .unwrap();
    assert_ne!(sealed, again);
    // Another vault of the same kind cannot open it.
    let other = env.secrets().await;
    assert!(other
        .open(&sealed, "tenant:t1:alert_webhook")
        .await
        .is_err());
}

/// Upstream API keys come from the secret a model version names: an environment
/// variable on the embedded side, Secrets Manager (its string, or the `api_key`
/// field of a JSON secret) on AWS.
pub async fn upstream_keys_are_read_from_their_secret(env: &Env) {
    use tenantai::gateway::upstream::UpstreamKeys;
    let name = format!("TENANTAI_TEST_UPSTREAM_{}", uuid::Uuid::new_v4().simple()).to_uppercase();
    let keys = if env.is_aws() {
        let sdk = tenantai::store::aws::sdk_config().await;
        let sm = aws_sdk_secretsmanager::Client::new(&sdk);
        sm.create_secret()
            .name(&name)
            .secret_string("sk-plain-1")
            .send()
            .await
            .unwrap();
        sm.create_secret()
            .name(format!("{name}_JSON"))
            .secret_string(r#"{"api_key": "sk-json-2", "note": "rotated monthly"}"#)
            .send()
            .await
            .unwrap();
        UpstreamKeys::secrets_manager(&sdk)
    } else {
        std::env::set_var(&name, "sk-plain-1");
        std::env::set_var(format!("{name}_JSON"), "sk-json-2");
        UpstreamKeys::from_env()
    };
    assert_eq!(&*keys.get(&name).await.unwrap(), "sk-plain-1");
    assert_eq!(
        &*keys.get(&format!("{name}_JSON")).await.unwrap(),
        "sk-json-2"
    );
    let missing = keys.get(&format!("{name}_MISSING")).await.unwrap_err();
    assert!(
        missing.contains("_MISSING") && !missing.contains("sk-"),
        "{missing}"
    );
}
