//! The `Blobs` port on a directory. Objects live under `<root>/objects/<key>`;
//! every write goes to `<root>/tmp` first and is renamed into place, so a reader
//! never sees a partial object. Keys are checked so none can leave `objects/`.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::store::blobs::{check_key, check_list, check_range};
use crate::store::{BlobMeta, BlobReader, Blobs, Page, StoreError, StoreResult};

#[derive(Clone, Debug)]
pub struct DirBlobs {
    objects: PathBuf,
    tmp: PathBuf,
}

impl DirBlobs {
    pub fn open(root: impl AsRef<Path>) -> StoreResult<Self> {
        let root = root.as_ref();
        let blobs = DirBlobs {
            objects: root.join("objects"),
            tmp: root.join("tmp"),
        };
        super::private_dir(root)?;
        super::private_dir(&blobs.objects)?;
        super::private_dir(&blobs.tmp)?;
        Ok(blobs)
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        check_key(key)?;
        Ok(self.objects.join(key))
    }

    /// Moves a finished temp file into place under `key`.
    async fn commit(&self, tmp: &Path, key: &str) -> StoreResult<()> {
        let dest = self.path(key)?;
        let conflict = || {
            StoreError::Invalid(format!(
                "blob key {key:?} conflicts with an existing key prefix"
            ))
        };
        if let Some(parent) = dest.parent() {
            if let Err(e) = tokio::fs::create_dir_all(parent).await {
                let _ = tokio::fs::remove_file(tmp).await;
                return Err(match e.kind() {
                    std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
                        conflict()
                    }
                    _ => e.into(),
                });
            }
        }
        if let Err(e) = tokio::fs::rename(tmp, &dest).await {
            let _ = tokio::fs::remove_file(tmp).await;
            return Err(if dest.is_dir() { conflict() } else { e.into() });
        }
        Ok(())
    }

    async fn write_tmp(&self, mut reader: BlobReader) -> StoreResult<(PathBuf, u64)> {
        let tmp = self.tmp.join(uuid::Uuid::new_v4().simple().to_string());
        let result = async {
            let mut file = super::files::private_create().open(&tmp).await?;
            let size = tokio::io::copy(&mut reader, &mut file).await?;
            file.flush().await?;
            file.sync_all().await?;
            Ok::<_, std::io::Error>(size)
        }
        .await;
        match result {
            Ok(size) => Ok((tmp, size)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e.into())
            }
        }
    }
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound(format!("no blob under key {key:?}"))
}

fn meta(key: String, md: &std::fs::Metadata) -> BlobMeta {
    let modified = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    BlobMeta {
        key,
        size: md.len(),
        modified,
    }
}

/// Every object key below `dir` (recursively), with its metadata. Links are skipped.
fn walk(
    objects: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::fs::Metadata)>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let md = entry.metadata()?;
        let path = entry.path();
        if md.is_dir() {
            walk(objects, &path, out)?;
        } else if md.is_file() {
            let Ok(rel) = path.strip_prefix(objects) else {
                continue;
            };
            let key: Vec<_> = rel.iter().map(|s| s.to_string_lossy()).collect();
            out.push((key.join("/"), md));
        }
    }
    Ok(())
}

#[async_trait]
impl Blobs for DirBlobs {
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.path(key)?;
        let reader: BlobReader = Box::pin(std::io::Cursor::new(data));
        let (tmp, _) = self.write_tmp(reader).await?;
        self.commit(&tmp, key).await
    }

    async fn put_stream(&self, key: &str, reader: BlobReader) -> StoreResult<u64> {
        self.path(key)?;
        let (tmp, size) = self.write_tmp(reader).await?;
        self.commit(&tmp, key).await?;
        Ok(size)
    }

    async fn get_stream(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<BlobReader> {
        let path = self.path(key)?;
        if let Some(r) = &range {
            check_range(r)?;
        }
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found(key)),
            Err(e) => return Err(e.into()),
        };
        let md = file.metadata().await?;
        if !md.is_file() {
            return Err(not_found(key));
        }
        let Some(range) = range else {
            return Ok(Box::pin(file));
        };
        if range.start >= md.len() {
            return Err(StoreError::Invalid(format!(
                "range starts at {} but blob {key:?} holds {} bytes",
                range.start,
                md.len()
            )));
        }
        file.seek(SeekFrom::Start(range.start)).await?;
        Ok(Box::pin(file.take(range.end.min(md.len()) - range.start)))
    }

    async fn head(&self, key: &str) -> StoreResult<Option<BlobMeta>> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(md) if md.is_file() => Ok(Some(meta(key.to_string(), &md))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<BlobMeta>> {
        check_list(prefix, limit)?;
        let after = cursor
            .map(|c| {
                crate::store::decode_token(c)
                    .ok_or_else(|| StoreError::Invalid("malformed page token".into()))
            })
            .transpose()?;
        // Only the directory the prefix names needs walking.
        let start = match prefix.rfind('/') {
            Some(i) => self.objects.join(&prefix[..i]),
            None => self.objects.clone(),
        };
        let objects = self.objects.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            walk(&objects, &start, &mut found)?;
            let mut keys: Vec<_> = found
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix) && after.as_ref().is_none_or(|a| k > a))
                .collect();
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            let more = keys.len() > limit;
            keys.truncate(limit);
            let items: Vec<_> = keys.into_iter().map(|(k, md)| meta(k, &md)).collect();
            let next = more
                .then(|| items.last().map(|m| crate::store::encode_token(&m.key)))
                .flatten();
            Ok(Page { items, next })
        })
        .await
        .map_err(|e| StoreError::Backend(format!("listing failed: {e}")))?
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Tidy now-empty directories up to objects/ (a failure just leaves them).
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.objects) {
            if tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}
