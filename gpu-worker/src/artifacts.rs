//! Model artifacts: a directory of files plus `manifest.json` (file -> SHA-256).
//! Loading verifies every listed file and refuses a mismatch.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::ArtifactError;

/// The manifest's file name inside a model directory.
pub const MANIFEST: &str = "manifest.json";

/// Files a sentence-transformers BERT model directory must hold (and list).
pub const REQUIRED_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];

/// What a model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A sentence-transformers BERT embedding model.
    Embedding,
    /// A chat model: one GGUF file (weights, tokenizer and chat template).
    Chat,
}

impl ModelKind {
    /// The files its manifest must list.
    pub fn required(self) -> &'static [&'static str] {
        match self {
            ModelKind::Embedding => &REQUIRED_FILES,
            ModelKind::Chat => &[crate::chat::MODEL_FILE],
        }
    }
}

/// A parsed manifest: relative file path -> lowercase hex SHA-256.
pub type Manifest = BTreeMap<String, String>;

/// Where a model comes from: a local directory or an S3 prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl ModelSource {
    /// Parses `s3://bucket/prefix` or a local path.
    pub fn parse(uri: &str) -> Result<Self, ArtifactError> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ArtifactError::BadUri(uri.to_string()));
            }
            return Ok(ModelSource::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if uri.is_empty() || uri.contains("://") {
            return Err(ArtifactError::BadUri(uri.to_string()));
        }
        Ok(ModelSource::Local(PathBuf::from(uri)))
    }
}

/// Makes an embedding model available as a verified local directory (see
/// [`resolve_kind`]).
pub async fn resolve(source: &ModelSource, cache_dir: &Path) -> Result<PathBuf, ArtifactError> {
    resolve_kind(source, cache_dir, ModelKind::Embedding).await
}

/// Makes the model available as a verified local directory: a local source is
/// verified in place; an S3 source is downloaded into `cache_dir` first (files whose
/// hash already matches are not downloaded again).
pub async fn resolve_kind(
    source: &ModelSource,
    cache_dir: &Path,
    kind: ModelKind,
) -> Result<PathBuf, ArtifactError> {
    match source {
        ModelSource::Local(dir) => {
            verify_dir_kind(dir, kind)?;
            Ok(dir.clone())
        }
        ModelSource::S3 { bucket, prefix } => {
            let dest = cache_dir.join(bucket).join(prefix);
            crate::s3::download(bucket, prefix, &dest).await?;
            verify_dir_kind(&dest, kind)?;
            Ok(dest)
        }
    }
}

/// Reads and checks a manifest: an object of safe relative paths to hex digests.
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, ArtifactError> {
    let bad = |reason: String| ArtifactError::BadManifest {
        path: path.to_path_buf(),
        reason,
    };
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    for (file, digest) in &manifest {
        if !is_safe_relative(file) {
            return Err(bad(format!("unsafe path {file:?}")));
        }
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{file}: {digest:?} is not a hex SHA-256")));
        }
    }
    Ok(manifest)
}

/// Checks that a manifest lists every file a model of `kind` needs.
pub fn check_required(manifest: &Manifest, kind: ModelKind) -> Result<(), ArtifactError> {
    for required in kind.required() {
        if !manifest.contains_key(*required) {
            return Err(ArtifactError::Unlisted(required.to_string()));
        }
    }
    Ok(())
}

/// Verifies every file the manifest of an embedding model's `dir` lists.
pub fn verify_dir(dir: &Path) -> Result<Manifest, ArtifactError> {
    verify_dir_kind(dir, ModelKind::Embedding)
}

/// Verifies every file the manifest of `dir` lists, and that it lists what a model
/// of `kind` needs.
pub fn verify_dir_kind(dir: &Path, kind: ModelKind) -> Result<Manifest, ArtifactError> {
    if !dir.is_dir() {
        return Err(ArtifactError::MissingDir(dir.to_path_buf()));
    }
    let manifest_path = dir.join(MANIFEST);
    let bytes = std::fs::read(&manifest_path).map_err(|source| ArtifactError::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let manifest = parse_manifest(&manifest_path, &bytes)?;
    check_required(&manifest, kind)?;
    for (file, expected) in &manifest {
        let actual = sha256_file(&dir.join(file))?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(ArtifactError::ChecksumMismatch {
                file: file.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(manifest)
}

/// The lowercase hex SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    let io = |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A relative path of normal components only (no `..`, no root).
pub fn is_safe_relative(file: &str) -> bool {
    let path = Path::new(file);
    !file.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path) {
        for f in REQUIRED_FILES {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
        let manifest: Manifest = REQUIRED_FILES
            .iter()
            .map(|f| (f.to_string(), sha256_file(&dir.join(f)).unwrap()))
            .collect();
        std::fs::write(dir.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
    }

    #[test]
    fn verifies_and_refuses_a_modified_file() {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path());
        assert_eq!(verify_dir(dir.path()).unwrap().len(), 5);
        std::fs::write(dir.path().join("tokenizer.json"), b"tampered").unwrap();
        let err = verify_dir(dir.path()).unwrap_err();
        assert!(
            matches!(err, ArtifactError::ChecksumMismatch { ref file, .. } if file == "tokenizer.json")
        );
        assert!(err
            .to_string()
            .contains("checksum mismatch for tokenizer.json"));
    }

    #[test]
    fn refuses_missing_dirs_unlisted_files_and_unsafe_paths() {
        let missing = verify_dir(Path::new("/nonexistent/model")).unwrap_err();
        assert!(missing.to_string().contains("scripts/fetch-model.sh"));
        let p = Path::new("m.json");
        assert!(matches!(
            parse_manifest(p, br#"{"config.json":"00"}"#),
            Err(ArtifactError::BadManifest { .. })
        ));
        let digest = "a".repeat(64);
        let only_config = format!(r#"{{"config.json":"{digest}"}}"#);
        let manifest = parse_manifest(p, only_config.as_bytes()).unwrap();
        assert!(matches!(
            check_required(&manifest, ModelKind::Embedding),
            Err(ArtifactError::Unlisted(_))
        ));
        assert!(matches!(
            check_required(&manifest, ModelKind::Chat),
            Err(ArtifactError::Unlisted(f)) if f == "model.gguf"
        ));
        let escape = format!(r#"{{"../etc/passwd":"{digest}"}}"#);
        assert!(matches!(
            parse_manifest(p, escape.as_bytes()),
            Err(ArtifactError::BadManifest { .. })
        ));
    }

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("s3://models/minilm/v1/").unwrap(),
            ModelSource::S3 {
                bucket: "models".into(),
                prefix: "minilm/v1".into()
            }
        );
        assert_eq!(
            ModelSource::parse("/opt/ml/model").unwrap(),
            ModelSource::Local("/opt/ml/model".into())
        );
        assert!(ModelSource::parse("s3:///x").is_err());
        assert!(ModelSource::parse("https://hub/x").is_err());
    }
}
