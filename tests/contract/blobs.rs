//! Contract cases of the `Blobs` port.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tenantai::store::{BlobReader, StoreError};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::env::Env;

/// The byte at offset `i` of the generated test objects.
fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A reader that generates `len` bytes on the fly: the test never holds them all.
struct Generated {
    pos: u64,
    len: u64,
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.len - self.pos)
            .min(64 * 1024);
        let start = self.pos;
        let chunk: Vec<u8> = (start..start + n).map(byte_at).collect();
        buf.put_slice(&chunk);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Reads a stream to its end, checking each byte against the generator.
async fn verify(mut reader: BlobReader, offset: u64, len: u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = offset;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (j, b) in buf[..n].iter().enumerate() {
            assert_eq!(
                *b,
                byte_at(pos + j as u64),
                "byte {} differs",
                pos + j as u64
            );
        }
        pos += n as u64;
    }
    assert_eq!(pos - offset, len, "stream length");
}

pub async fn round_trip_head_delete(env: &Env) {
    let b = env.blobs();
    let data = Bytes::from_static(b"{\"custom_id\":\"1\"}\n");
    b.put("files/t1/input.jsonl", data.clone()).await.unwrap();
    assert_eq!(b.get("files/t1/input.jsonl").await.unwrap(), data);
    let meta = b.head("files/t1/input.jsonl").await.unwrap().unwrap();
    assert_eq!(
        (meta.key.as_str(), meta.size),
        ("files/t1/input.jsonl", data.len() as u64)
    );
    // Overwrite replaces.
    b.put("files/t1/input.jsonl", Bytes::from_static(b"v2"))
        .await
        .unwrap();
    assert_eq!(
        b.get("files/t1/input.jsonl").await.unwrap(),
        Bytes::from_static(b"v2")
    );
    assert!(matches!(
        b.get("files/t1/missing").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(b.head("files/t1/missing").await.unwrap(), None);
    // A prefix of a key is not an object.
    assert_eq!(b.head("files/t1").await.unwrap(), None);
    b.delete("files/t1/input.jsonl").await.unwrap();
    assert_eq!(b.head("files/t1/input.jsonl").await.unwrap(), None);
    b.delete("files/t1/input.jsonl").await.unwrap();
    // Empty objects are objects.
    b.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(b.head("empty").await.unwrap().unwrap().size, 0);
}

pub async fn large_object_streams(env: &Env) {
    let b = env.blobs();
    let len = 40 * 1024 * 1024 + 12_345;
    let size = b
        .put_stream("big/object.bin", Box::pin(Generated { pos: 0, len }))
        .await
        .unwrap();
    assert_eq!(size, len);
    assert_eq!(b.head("big/object.bin").await.unwrap().unwrap().size, len);
    verify(b.get_stream("big/object.bin", None).await.unwrap(), 0, len).await;
    // A range across the first part boundary, and one at the very end.
    let mid = 16 * 1024 * 1024 - 100;
    verify(
        b.get_stream("big/object.bin", Some(mid..mid + 1000))
            .await
            .unwrap(),
        mid,
        1000,
    )
    .await;
    let tail = b
        .get_range("big/object.bin", len - 10..len + 50)
        .await
        .unwrap();
    assert_eq!(tail.len(), 10, "a range past the end is cut at the end");
    assert_eq!(tail[9], byte_at(len - 1));
}

pub async fn range_reads(env: &Env) {
    let b = env.blobs();
    b.put("r/abc", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(
        b.get_range("r/abc", 2..5).await.unwrap(),
        Bytes::from_static(b"234")
    );
    assert_eq!(
        b.get_range("r/abc", 9..10).await.unwrap(),
        Bytes::from_static(b"9")
    );
    assert!(matches!(
        b.get_range("r/abc", 10..20).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        b.get_range("r/abc", 5..5).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        b.get_range("r/missing", 0..5).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn listing_pages(env: &Env) {
    let b = env.blobs();
    let mut expected = Vec::new();
    for i in 0..23 {
        let key = format!("out/batch-1/part-{i:03}.jsonl");
        b.put(&key, Bytes::from(vec![b'x'; i])).await.unwrap();
        expected.push(key);
    }
    b.put("out/batch-10/part-000.jsonl", Bytes::from_static(b"y"))
        .await
        .unwrap();
    b.put("outside", Bytes::from_static(b"z")).await.unwrap();
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = b.list("out/batch-1/", cursor.as_deref(), 10).await.unwrap();
        assert!(page.items.len() <= 10);
        pages += 1;
        got.extend(page.items.into_iter().map(|m| (m.key, m.size)));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
        assert!(pages < 10, "listing does not end");
    }
    assert_eq!(pages, 3);
    let want: Vec<_> = expected
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i as u64))
        .collect();
    assert_eq!(got, want);
    // A prefix that ends inside a segment matches across segments.
    let all = b.list("out/batch-1", None, 100).await.unwrap();
    assert_eq!(all.items.len(), 24);
    assert!(b.list("nothing/", None, 10).await.unwrap().items.is_empty());
}

pub async fn keys_that_escape_are_rejected(env: &Env) {
    let b = env.blobs();
    for key in ["../x", "a/../../x", "/etc/passwd", "a//b", "", "trailing/"] {
        match b.put(key, Bytes::from_static(b"evil")).await {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("invalid blob key"), "{msg}"),
            other => panic!("key {key:?} was not rejected: {other:?}"),
        }
        assert!(matches!(b.get(key).await, Err(StoreError::Invalid(_))));
        assert!(matches!(b.delete(key).await, Err(StoreError::Invalid(_))));
    }
    assert!(matches!(
        b.list("../", None, 10).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(b.list("", None, 10).await.unwrap().items.is_empty());
}
