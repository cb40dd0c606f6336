//! Downloads a model directory from `s3://bucket/prefix` into a local cache.
//! The SDK honours the standard AWS configuration (`AWS_ENDPOINT_URL`, region,
//! credentials chain).

use std::path::Path;

use aws_config::BehaviorVersion;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use tokio::io::AsyncWriteExt;

use crate::artifacts::{parse_manifest, sha256_file, MANIFEST};
use crate::error::ArtifactError;

/// An S3 client from the environment, with one rustls (ring) HTTPS client;
/// path-style addressing when a custom endpoint is configured.
pub async fn client() -> aws_sdk_s3::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(config.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn key_of(prefix: &str, file: &str) -> String {
    if prefix.is_empty() {
        file.to_string()
    } else {
        format!("{prefix}/{file}")
    }
}

/// Fetches the manifest and every file it lists that is not already cached with
/// the right hash. Files land under a temporary name and are renamed into place.
pub async fn download(bucket: &str, prefix: &str, dest: &Path) -> Result<(), ArtifactError> {
    let s3 = client().await;
    let manifest_key = key_of(prefix, MANIFEST);
    let manifest_bytes = get_bytes(&s3, bucket, &manifest_key).await?;
    let manifest = parse_manifest(Path::new(&manifest_key), &manifest_bytes)?;
    for (file, expected) in &manifest {
        let path = dest.join(file);
        if path.is_file() && sha256_file(&path).is_ok_and(|h| h.eq_ignore_ascii_case(expected)) {
            continue;
        }
        let key = key_of(prefix, file);
        tracing::info!(bucket, key = %key, "downloading model file");
        fetch_to(&s3, bucket, &key, &path).await?;
    }
    let manifest_path = dest.join(MANIFEST);
    tokio::fs::write(&manifest_path, &manifest_bytes)
        .await
        .map_err(|source| ArtifactError::Io {
            path: manifest_path,
            source,
        })
}

async fn get_bytes(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Vec<u8>, ArtifactError> {
    let err = |reason: String| ArtifactError::S3 {
        key: format!("s3://{bucket}/{key}"),
        reason,
    };
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()))?;
    let data = out.body.collect().await.map_err(|e| err(e.to_string()))?;
    Ok(data.into_bytes().to_vec())
}

async fn fetch_to(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
) -> Result<(), ArtifactError> {
    let err = |reason: String| ArtifactError::S3 {
        key: format!("s3://{bucket}/{key}"),
        reason,
    };
    let io = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()))?;
    let tmp = path.with_extension("partial");
    let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
    let mut body = out.body;
    while let Some(chunk) = body.try_next().await.map_err(|e| err(e.to_string()))? {
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    drop(file);
    tokio::fs::rename(&tmp, path).await.map_err(io)
}
