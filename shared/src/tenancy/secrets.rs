//! Secrets at rest (a webhook's signing secret), by envelope encryption.
//!
//! Each value is encrypted with AES-256-GCM under a fresh 256-bit data key; the
//! data key is stored beside it wrapped by a key vault ([`KeyVault`]): a KMS key
//! on AWS ([`KmsVault`], `TENANTAI_KMS_KEY_ID`), a local key file of mode 0600 in
//! `tenantai dev` ([`LocalVault`], `<data dir>/secrets.key`, or
//! `TENANTAI_SECRETS_KEY_FILE`). Every seal names a context (whose secret it is,
//! e.g. `tenant:ten_1:alert_webhook`) that is bound into both encryptions (GCM
//! associated data; the KMS encryption context), so a sealed value copied onto
//! another tenant's record does not open.
//!
//! A sealed value reads `tsec1:<vault>:<wrapped key>:<nonce><ciphertext>`
//! (base64url parts); the plaintext never reaches the table.

use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const FORMAT: &str = "tsec1";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("this deployment has no key to encrypt secrets with (set TENANTAI_KMS_KEY_ID, or TENANTAI_SECRETS_KEY_FILE)")]
    NoVault,
    #[error("the sealed secret is unreadable: {0}")]
    Corrupt(String),
    #[error("key vault: {0}")]
    Vault(String),
}

/// A fresh data key: its bytes (used once, then dropped) and its wrapped form.
pub struct DataKey {
    pub plaintext: [u8; KEY_BYTES],
    pub wrapped: Vec<u8>,
}

/// Where data keys are made and unwrapped: the port behind [`Secrets`].
#[async_trait]
pub trait KeyVault: Send + Sync {
    /// Short name recorded in each sealed value (`kms`, `local`).
    fn kind(&self) -> &'static str;
    /// A new data key, wrapped for `context`.
    async fn data_key(&self, context: &str) -> Result<DataKey, SecretsError>;
    /// The data key `wrapped` holds, if it was wrapped for `context` by this vault.
    async fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<[u8; KEY_BYTES], SecretsError>;
}

fn random<const N: usize>() -> Result<[u8; N], SecretsError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| SecretsError::Vault(format!("no randomness: {e}")))?;
    Ok(out)
}

fn cipher(key: &[u8]) -> Result<Aes256Gcm, SecretsError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| SecretsError::Corrupt("bad key length".into()))
}

/// `nonce || AES-256-GCM(key, nonce, msg, aad)`.
fn encrypt(key: &[u8], msg: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretsError> {
    let nonce = random::<NONCE_BYTES>()?;
    let sealed = cipher(key)?
        .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
        .map_err(|_| SecretsError::Vault("encryption failed".into()))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

fn decrypt(key: &[u8], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretsError> {
    if data.len() < NONCE_BYTES {
        return Err(SecretsError::Corrupt("too short".into()));
    }
    let (nonce, sealed) = data.split_at(NONCE_BYTES);
    cipher(key)?
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .map_err(|_| SecretsError::Corrupt("it does not open with this key and context".into()))
}

/// A key file holding the 256-bit key that wraps data keys.
pub struct LocalVault {
    key: [u8; KEY_BYTES],
}

impl LocalVault {
    /// Reads the key file, creating it (mode 0600, 32 random bytes hex-encoded)
    /// when absent. A file others may read is refused.
    pub fn open_or_create(path: &Path) -> Result<Self, SecretsError> {
        let err = |e: std::io::Error| SecretsError::Vault(format!("{}: {e}", path.display()));
        if !path.exists() {
            let key = random::<KEY_BYTES>()?;
            match crate::store::embedded::write_private_new(path, hex::encode(key).as_bytes()) {
                Ok(()) => {}
                // Another process created it first: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e)),
            }
        }
        crate::store::embedded::check_private(path).map_err(err)?;
        let text = std::fs::read_to_string(path).map_err(err)?;
        let bytes = hex::decode(text.trim())
            .map_err(|_| SecretsError::Vault(format!("{} is not a hex key", path.display())))?;
        let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| {
            SecretsError::Vault(format!("{} does not hold a 256-bit key", path.display()))
        })?;
        Ok(LocalVault { key })
    }
}

fn wrap_aad(context: &str) -> Vec<u8> {
    format!("tenantai data key|{context}").into_bytes()
}

#[async_trait]
impl KeyVault for LocalVault {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn data_key(&self, context: &str) -> Result<DataKey, SecretsError> {
        let plaintext = random::<KEY_BYTES>()?;
        let wrapped = encrypt(&self.key, &plaintext, &wrap_aad(context))?;
        Ok(DataKey { plaintext, wrapped })
    }

    async fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<[u8; KEY_BYTES], SecretsError> {
        decrypt(&self.key, wrapped, &wrap_aad(context))?
            .try_into()
            .map_err(|_| SecretsError::Corrupt("bad data key".into()))
    }
}

/// A KMS key: data keys from GenerateDataKey, opened with Decrypt, both under
/// the encryption context `{"tenantai": context}`.
pub struct KmsVault {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl KmsVault {
    pub fn new(config: &aws_config::SdkConfig, key_id: impl Into<String>) -> Self {
        KmsVault {
            client: aws_sdk_kms::Client::new(config),
            key_id: key_id.into(),
        }
    }
}

fn kms_err(e: impl std::error::Error + 'static) -> SecretsError {
    SecretsError::Vault(format!(
        "KMS: {}",
        aws_sdk_kms::error::DisplayErrorContext(e)
    ))
}

#[async_trait]
impl KeyVault for KmsVault {
    fn kind(&self) -> &'static str {
        "kms"
    }

    async fn data_key(&self, context: &str) -> Result<DataKey, SecretsError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .encryption_context("tenantai", context)
            .send()
            .await
            .map_err(kms_err)?;
        let plaintext: [u8; KEY_BYTES] = out
            .plaintext()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default()
            .try_into()
            .map_err(|_| SecretsError::Vault("KMS returned no 256-bit data key".into()))?;
        let wrapped = out
            .ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| SecretsError::Vault("KMS returned no wrapped data key".into()))?;
        Ok(DataKey { plaintext, wrapped })
    }

    async fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<[u8; KEY_BYTES], SecretsError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped))
            .encryption_context("tenantai", context)
            .send()
            .await
            .map_err(kms_err)?;
        out.plaintext()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default()
            .try_into()
            .map_err(|_| SecretsError::Corrupt("KMS returned no 256-bit data key".into()))
    }
}

/// Seals and opens secrets through the deployment's key vault (or refuses,
/// when it has none).
#[derive(Clone, Default)]
pub struct Secrets {
    vault: Option<Arc<dyn KeyVault>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.vault.as_ref().map_or("none", |v| v.kind());
        f.debug_struct("Secrets").field("vault", &kind).finish()
    }
}

impl Secrets {
    pub fn new(vault: Arc<dyn KeyVault>) -> Self {
        Secrets { vault: Some(vault) }
    }

    /// No vault: sealing and opening fail with [`SecretsError::NoVault`].
    pub fn none() -> Self {
        Secrets::default()
    }

    pub fn local(key_file: &Path) -> Result<Self, SecretsError> {
        Ok(Self::new(Arc::new(LocalVault::open_or_create(key_file)?)))
    }

    pub fn kms(config: &aws_config::SdkConfig, key_id: impl Into<String>) -> Self {
        Self::new(Arc::new(KmsVault::new(config, key_id)))
    }

    /// From the environment: KMS when `TENANTAI_KMS_KEY_ID` is set (and an AWS
    /// configuration is at hand), else the key file `TENANTAI_SECRETS_KEY_FILE`,
    /// else `fallback_key_file`, else none.
    pub fn from_env(
        aws: Option<&aws_config::SdkConfig>,
        fallback_key_file: Option<&Path>,
    ) -> Result<Self, SecretsError> {
        if let (Ok(key_id), Some(aws)) = (std::env::var("TENANTAI_KMS_KEY_ID"), aws) {
            return Ok(Self::kms(aws, key_id));
        }
        if let Ok(file) = std::env::var("TENANTAI_SECRETS_KEY_FILE") {
            return Self::local(Path::new(&file));
        }
        match fallback_key_file {
            Some(file) => Self::local(file),
            None => Ok(Self::none()),
        }
    }

    /// The vault's kind, if there is one.
    pub fn kind(&self) -> Option<&'static str> {
        self.vault.as_ref().map(|v| v.kind())
    }

    fn vault(&self) -> Result<&Arc<dyn KeyVault>, SecretsError> {
        self.vault.as_ref().ok_or(SecretsError::NoVault)
    }

    /// Encrypts `plaintext` for `context`.
    pub async fn seal(&self, plaintext: &str, context: &str) -> Result<String, SecretsError> {
        let vault = self.vault()?;
        let key = vault.data_key(context).await?;
        let data = encrypt(&key.plaintext, plaintext.as_bytes(), context.as_bytes())?;
        Ok(format!(
            "{FORMAT}:{}:{}:{}",
            vault.kind(),
            URL_SAFE_NO_PAD.encode(&key.wrapped),
            URL_SAFE_NO_PAD.encode(data)
        ))
    }

    /// Decrypts what [`Secrets::seal`] made for the same `context`.
    pub async fn open(&self, sealed: &str, context: &str) -> Result<String, SecretsError> {
        let vault = self.vault()?;
        let corrupt = |m: &str| SecretsError::Corrupt(m.to_string());
        let mut parts = sealed.split(':');
        let (Some(FORMAT), Some(kind), Some(wrapped), Some(data), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(corrupt("not a sealed secret"));
        };
        if kind != vault.kind() {
            return Err(SecretsError::Corrupt(format!(
                "it was sealed by a '{kind}' vault; this deployment has a '{}' one",
                vault.kind()
            )));
        }
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| corrupt("bad base64"));
        let key = vault.unwrap(&decode(wrapped)?, context).await?;
        let plain = decrypt(&key, &decode(data)?, context.as_bytes())?;
        String::from_utf8(plain).map_err(|_| corrupt("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sealed_secrets_open_only_with_their_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let secrets = Secrets::local(&path).unwrap();
        let sealed = secrets.seal("whsec_abc", "tenant:a").await.unwrap();
        assert!(sealed.starts_with("tsec1:local:"), "{sealed}");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            secrets.open(&sealed, "tenant:a").await.unwrap(),
            "whsec_abc"
        );
        assert!(secrets.open(&sealed, "tenant:b").await.is_err());
        // The same file opens it again (a restart); another key does not.
        let again = Secrets::local(&path).unwrap();
        assert_eq!(again.open(&sealed, "tenant:a").await.unwrap(), "whsec_abc");
        let other = Secrets::local(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&sealed, "tenant:a").await.is_err());
        assert!(secrets.open("tsec1:local:AA:AA", "tenant:a").await.is_err());
        assert_eq!(
            Secrets::none().seal("x", "c").await,
            Err(SecretsError::NoVault)
        );
    }
}
