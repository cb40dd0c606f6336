//! Gzipped streams into and out of Blobs in bounded memory, with the SHA-256 of
//! the stored (compressed) bytes computed on the way.

use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use flate2::write::{GzDecoder, GzEncoder};
use flate2::Compression;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;

use crate::store::{BlobReader, Blobs, StoreError, StoreResult};

/// Compressed bytes gathered before they go down the pipe to the upload.
const FLUSH_BYTES: usize = 64 * 1024;
/// Bytes in flight between the compressor and the upload.
const PIPE_BYTES: usize = 256 * 1024;
/// Compressed bytes read at a time (a chunk inflates to at most ~1000x).
const READ_BYTES: usize = 8 * 1024;
/// Longest line a reader accepts (an item holds at most 400 KB on DynamoDB).
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// What a finished upload stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Stored (compressed) size.
    pub bytes: u64,
    /// Size before compression.
    pub raw_bytes: u64,
}

/// The upload's end of the pipe: an end of stream before the writer said it
/// finished is an error, so an abandoned upload never stores a truncated object.
struct Pipe {
    inner: DuplexStream,
    finished: Arc<AtomicBool>,
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let eof = buf.filled().len() == before && buf.remaining() > 0;
            if eof && !self.finished.load(Ordering::SeqCst) {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the writer abandoned this upload",
                )));
            }
        }
        polled
    }
}

/// Gzips what is written into one new object. Dropping it unfinished abandons
/// the upload (nothing is stored under the key).
pub struct GzipUpload {
    encoder: Option<GzEncoder<Vec<u8>>>,
    pipe: Option<DuplexStream>,
    upload: Option<JoinHandle<StoreResult<u64>>>,
    finished: Arc<AtomicBool>,
    sha: Sha256,
    bytes: u64,
    raw_bytes: u64,
}

impl GzipUpload {
    /// Starts the upload of `key`; must run inside a Tokio runtime.
    pub fn start(blobs: Arc<dyn Blobs>, key: String) -> Self {
        Self::start_raw(blobs, key, true)
    }

    /// Like [`GzipUpload::start`], but stores the bytes as written (uncompressed).
    pub fn start_plain(blobs: Arc<dyn Blobs>, key: String) -> Self {
        Self::start_raw(blobs, key, false)
    }

    fn start_raw(blobs: Arc<dyn Blobs>, key: String, gzip: bool) -> Self {
        let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
        let finished = Arc::new(AtomicBool::new(false));
        let pipe = Pipe {
            inner: reader,
            finished: finished.clone(),
        };
        let upload = tokio::spawn(async move { blobs.put_stream(&key, Box::pin(pipe)).await });
        GzipUpload {
            encoder: gzip.then(|| GzEncoder::new(Vec::new(), Compression::default())),
            pipe: Some(writer),
            upload: Some(upload),
            finished,
            sha: Sha256::new(),
            bytes: 0,
            raw_bytes: 0,
        }
    }

    /// Bytes written so far, before compression.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    pub async fn write(&mut self, data: &[u8]) -> StoreResult<()> {
        self.raw_bytes += data.len() as u64;
        match self.encoder.as_mut() {
            Some(enc) => {
                enc.write_all(data)?;
                if enc.get_ref().len() >= FLUSH_BYTES {
                    let out = std::mem::take(enc.get_mut());
                    self.send(&out).await?;
                }
                Ok(())
            }
            None => self.send(data).await,
        }
    }

    async fn send(&mut self, data: &[u8]) -> StoreResult<()> {
        self.sha.update(data);
        self.bytes += data.len() as u64;
        let pipe = self
            .pipe
            .as_mut()
            .ok_or_else(|| StoreError::Backend("upload already finished".into()))?;
        if pipe.write_all(data).await.is_err() {
            // The upload side stopped reading: its own error says why.
            return Err(self.upload_error().await);
        }
        Ok(())
    }

    async fn upload_error(&mut self) -> StoreError {
        match self.upload.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => StoreError::Backend("upload ended early".into()),
                Err(e) => StoreError::Backend(format!("upload task failed: {e}")),
            },
            None => StoreError::Backend("upload already finished".into()),
        }
    }

    /// Completes the object; returns what was stored.
    pub async fn finish(mut self) -> StoreResult<Written> {
        if let Some(enc) = self.encoder.take() {
            let out = enc.finish()?;
            self.send(&out).await?;
        }
        self.finished.store(true, Ordering::SeqCst);
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.shutdown().await;
        }
        let task = self
            .upload
            .take()
            .ok_or_else(|| StoreError::Backend("upload already finished".into()))?;
        let stored = task
            .await
            .map_err(|e| StoreError::Backend(format!("upload task failed: {e}")))??;
        if stored != self.bytes {
            return Err(StoreError::Backend(format!(
                "stored {stored} bytes of {}",
                self.bytes
            )));
        }
        Ok(Written {
            sha256: hex::encode(self.sha.clone().finalize()),
            bytes: self.bytes,
            raw_bytes: self.raw_bytes,
        })
    }
}

/// Reads a gzipped object line by line, hashing the stored bytes.
pub struct GzipLines {
    reader: BlobReader,
    decoder: Option<GzDecoder<Vec<u8>>>,
    /// Decoded bytes from `pos` on are not yet returned.
    pos: usize,
    done: Vec<u8>,
    sha: Sha256,
    bytes: u64,
}

impl GzipLines {
    pub fn new(reader: BlobReader) -> Self {
        GzipLines {
            reader,
            decoder: Some(GzDecoder::new(Vec::new())),
            pos: 0,
            done: Vec::new(),
            sha: Sha256::new(),
            bytes: 0,
        }
    }

    /// The next line (without its newline), or `None` at the end. A stream that
    /// is not gzip, is truncated or holds a line over [`MAX_LINE_BYTES`] is an
    /// [`StoreError::Invalid`].
    pub async fn next_line(&mut self) -> StoreResult<Option<Vec<u8>>> {
        let mut chunk = vec![0u8; READ_BYTES];
        loop {
            let ended = self.decoder.is_none();
            let buf = match self.decoder.as_mut() {
                Some(d) => d.get_mut(),
                None => &mut self.done,
            };
            let pos = self.pos;
            if let Some(i) = buf[pos..].iter().position(|b| *b == b'\n') {
                let line = buf[pos..pos + i].to_vec();
                self.pos = pos + i + 1;
                if self.pos > 1024 * 1024 {
                    buf.drain(..self.pos);
                    self.pos = 0;
                }
                return Ok(Some(line));
            }
            if buf.len() - pos > MAX_LINE_BYTES {
                return Err(corrupt(format!("a line exceeds {MAX_LINE_BYTES} bytes")));
            }
            if ended {
                let rest = buf[pos..].to_vec();
                self.pos = buf.len();
                return Ok((!rest.is_empty()).then_some(rest));
            }
            let n = self.reader.read(&mut chunk).await?;
            if n == 0 {
                if let Some(decoder) = self.decoder.take() {
                    self.done = decoder
                        .finish()
                        .map_err(|e| corrupt(format!("not a complete gzip stream: {e}")))?;
                }
                continue;
            }
            self.sha.update(&chunk[..n]);
            self.bytes += n as u64;
            if let Some(decoder) = self.decoder.as_mut() {
                decoder
                    .write_all(&chunk[..n])
                    .map_err(|e| corrupt(format!("not a gzip stream: {e}")))?;
            }
        }
    }

    /// The SHA-256 and size of the stored bytes read so far (all of them once
    /// [`GzipLines::next_line`] answered `None`).
    pub fn digest(&self) -> (String, u64) {
        (hex::encode(self.sha.clone().finalize()), self.bytes)
    }
}

fn corrupt(why: String) -> StoreError {
    StoreError::Invalid(why)
}

/// The hex SHA-256 and size of a whole object, streamed.
pub async fn sha256_of(mut reader: BlobReader) -> StoreResult<(String, u64)> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((hex::encode(sha.finalize()), total));
        }
        sha.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::DirBlobs;

    #[tokio::test]
    async fn round_trip_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn Blobs> = Arc::new(DirBlobs::open(dir.path()).unwrap());
        let mut up = GzipUpload::start(blobs.clone(), "a/b.gz".into());
        let mut want = Vec::new();
        for i in 0..20_000 {
            let line = format!("{{\"i\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 50));
            up.write(line.as_bytes()).await.unwrap();
            want.push(line.trim_end().to_string());
        }
        let written = up.finish().await.unwrap();
        let stored = blobs.get("a/b.gz").await.unwrap();
        assert_eq!(stored.len() as u64, written.bytes);
        assert!(written.bytes < written.raw_bytes / 3);
        let mut lines = GzipLines::new(blobs.get_stream("a/b.gz", None).await.unwrap());
        let mut got = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            got.push(String::from_utf8(l).unwrap());
        }
        assert_eq!(got, want);
        assert_eq!(lines.digest(), (written.sha256.clone(), written.bytes));
        let whole = sha256_of(blobs.get_stream("a/b.gz", None).await.unwrap()).await;
        assert_eq!(whole.unwrap(), (written.sha256, written.bytes));
    }

    #[tokio::test]
    async fn an_abandoned_upload_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn Blobs> = Arc::new(DirBlobs::open(dir.path()).unwrap());
        let mut up = GzipUpload::start(blobs.clone(), "gone.gz".into());
        up.write(&vec![b'x'; 300_000]).await.unwrap();
        drop(up);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(blobs.head("gone.gz").await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_or_foreign_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn Blobs> = Arc::new(DirBlobs::open(dir.path()).unwrap());
        let mut up = GzipUpload::start(blobs.clone(), "ok.gz".into());
        for i in 0..1000 {
            up.write(format!("line {i}\n").as_bytes()).await.unwrap();
        }
        up.finish().await.unwrap();
        let whole = blobs.get("ok.gz").await.unwrap();
        blobs
            .put("cut.gz", whole.slice(..whole.len() - 10))
            .await
            .unwrap();
        blobs
            .put("plain", bytes::Bytes::from_static(b"hello\n"))
            .await
            .unwrap();
        for key in ["cut.gz", "plain"] {
            let mut lines = GzipLines::new(blobs.get_stream(key, None).await.unwrap());
            let mut result = Ok(None);
            for _ in 0..2000 {
                result = lines.next_line().await;
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(
                matches!(result, Err(StoreError::Invalid(_))),
                "{key}: {result:?}"
            );
        }
    }
}
