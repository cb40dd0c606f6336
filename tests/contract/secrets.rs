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
