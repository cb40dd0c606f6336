//! A gzipped tar archive written entry by entry into one object, each entry's
//! content streamed (from bytes or from another object) in bounded memory.

use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::stream::{GzipUpload, Written};
use crate::store::{BlobReader, Blobs, StoreError, StoreResult};

const BLOCK: usize = 512;

pub struct TarGz {
    out: GzipUpload,
    mtime: u64,
}

fn header(name: &str, size: u64, mtime: u64) -> StoreResult<[u8; BLOCK]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .map_err(|e| StoreError::Invalid(format!("archive entry name {name:?}: {e}")))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut block = [0u8; BLOCK];
    block.copy_from_slice(h.as_bytes());
    Ok(block)
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

impl TarGz {
    pub fn start(blobs: Arc<dyn Blobs>, key: String, mtime: i64) -> Self {
        TarGz {
            out: GzipUpload::start(blobs, key),
            mtime: mtime.max(0) as u64,
        }
    }

    pub async fn add_bytes(&mut self, name: &str, data: &[u8]) -> StoreResult<()> {
        self.out
            .write(&header(name, data.len() as u64, self.mtime)?)
            .await?;
        self.out.write(data).await?;
        self.out
            .write(&[0u8; BLOCK][..padding(data.len() as u64)])
            .await
    }

    /// Adds an entry of exactly `size` bytes read from `reader`.
    pub async fn add_stream(
        &mut self,
        name: &str,
        size: u64,
        mut reader: BlobReader,
    ) -> StoreResult<()> {
        self.out.write(&header(name, size, self.mtime)?).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut copied = 0u64;
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > size {
                break;
            }
            self.out.write(&buf[..n]).await?;
        }
        if copied != size {
            return Err(StoreError::Backend(format!(
                "archive entry {name:?} changed while being copied ({copied} bytes, expected {size})"
            )));
        }
        self.out.write(&[0u8; BLOCK][..padding(size)]).await
    }

    pub async fn finish(mut self) -> StoreResult<Written> {
        self.out.write(&[0u8; 2 * BLOCK]).await?;
        self.out.finish().await
    }
}
