//! Loading a model from `s3://bucket/prefix` (against the AWS emulator that
//! scripts/test.sh starts): downloaded into a cache, verified, refused if modified.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use gpu_worker::artifacts::{resolve, verify_dir, ModelSource, MANIFEST};
use gpu_worker::ArtifactError;

/// The emulator's S3 client, or `None` (loudly) when this run promised none.
async fn s3() -> Option<aws_sdk_s3::Client> {
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("TENANTAI_TEST_AWS").is_some();
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
        assert!(
            !required,
            "this test needs the AWS emulator: AWS_ENDPOINT_URL is not set (run ./scripts/test.sh)"
        );
        eprintln!("SKIPPED: loading from S3 needs AWS_ENDPOINT_URL (run ./scripts/test.sh)");
        return None;
    };
    assert!(
        endpoint.starts_with("http://127.") || endpoint.starts_with("http://localhost"),
        "refusing to run against a non-loopback endpoint: {endpoint}"
    );
    Some(gpu_worker::s3::client().await)
}

async fn upload(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, dir: &Path, files: &[String]) {
    for file in files {
        let body = ByteStream::from(std::fs::read(dir.join(file)).unwrap());
        s3.put_object()
            .bucket(bucket)
            .key(format!("{prefix}/{file}"))
            .body(body)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn model_loads_from_s3_into_a_cache_and_a_modified_file_is_refused() {
    let Some(s3) = s3().await else { return };
    let model = common::model_dir();
    let manifest = verify_dir(&model).unwrap();
    let mut files: Vec<String> = manifest.keys().cloned().collect();
    files.push(MANIFEST.to_string());
    let bucket = format!("gpu-worker-test-{}", std::process::id());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    upload(&s3, &bucket, "minilm/v1", &model, &files).await;

    let cache = tempfile::tempdir().unwrap();
    let source = ModelSource::parse(&format!("s3://{bucket}/minilm/v1")).unwrap();
    let dir = resolve(&source, cache.path()).await.unwrap();
    assert!(dir.starts_with(cache.path()));
    assert_eq!(verify_dir(&dir).unwrap(), manifest);
    // A second resolve reuses the cache (and still verifies).
    assert_eq!(resolve(&source, cache.path()).await.unwrap(), dir);

    // The same manifest over a modified tokenizer: refused, naming the file.
    upload(&s3, &bucket, "minilm/bad", &model, &files).await;
    s3.put_object()
        .bucket(&bucket)
        .key("minilm/bad/tokenizer.json")
        .body(ByteStream::from_static(b"{}"))
        .send()
        .await
        .unwrap();
    let bad = ModelSource::parse(&format!("s3://{bucket}/minilm/bad")).unwrap();
    let err = resolve(&bad, cache.path()).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::ChecksumMismatch { ref file, .. } if file == "tokenizer.json"),
        "{err}"
    );
}
