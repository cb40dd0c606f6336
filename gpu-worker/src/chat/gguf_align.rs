//! A look at a GGUF header before candle reads it: candle divides the header's
//! end by `general.alignment` unchecked, so a file declaring an alignment of 0
//! would panic the loader. This walks the metadata (skipping every value) and
//! refuses an alignment that is not a power of two; anything else it cannot
//! read is left to candle's reader, which reports it.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

/// GGUF's magic, `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Arrays nest at most this deep (candle's own bound).
const MAX_DEPTH: usize = 64;

/// What the walk found: an unreadable header ends it without a verdict.
enum Walk {
    Done,
    BadAlignment(u64),
}

/// The size of a value of fixed-size type `kind`.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

struct Reader<'a> {
    inner: &'a mut BufReader<File>,
    /// Version 1 has 32-bit lengths; later versions 64-bit.
    wide: bool,
}

impl Reader<'_> {
    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.inner.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn len(&mut self) -> std::io::Result<u64> {
        if self.wide {
            let mut b = [0u8; 8];
            self.inner.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        } else {
            self.u32().map(u64::from)
        }
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n = i64::try_from(n).map_err(|_| std::io::ErrorKind::InvalidData)?;
        self.inner.seek_relative(n)
    }

    fn string(&mut self) -> std::io::Result<Vec<u8>> {
        let n = self.len()?;
        if n > 4096 {
            // Longer than any key we look for: skip it.
            self.skip(n)?;
            return Ok(Vec::new());
        }
        let mut s = vec![0u8; n as usize];
        self.inner.read_exact(&mut s)?;
        Ok(s)
    }

    /// The value of type `kind` when candle would take it as an alignment
    /// (8 to 32 bits, not negative); other values are skipped.
    fn alignment(&mut self, kind: u32) -> std::io::Result<Option<u64>> {
        let size = match kind {
            0 | 1 => 1,
            2 | 3 => 2,
            4 | 5 => 4,
            _ => return self.value(kind, 0).map(|()| None),
        };
        let mut b = [0u8; 8];
        self.inner.read_exact(&mut b[..size])?;
        let negative = kind % 2 == 1 && b[size - 1] & 0x80 != 0;
        Ok((!negative).then(|| u64::from_le_bytes(b)))
    }

    /// Skips a value of type `kind`.
    fn value(&mut self, kind: u32, depth: usize) -> std::io::Result<()> {
        if let Some(size) = fixed_size(kind) {
            return self.skip(size);
        }
        match kind {
            8 => {
                let n = self.len()?;
                self.skip(n)
            }
            9 if depth < MAX_DEPTH => {
                let inner = self.u32()?;
                let n = self.len()?;
                match fixed_size(inner) {
                    Some(size) => {
                        self.skip(n.checked_mul(size).ok_or(std::io::ErrorKind::InvalidData)?)
                    }
                    None => (0..n).try_for_each(|_| self.value(inner, depth + 1)),
                }
            }
            _ => Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
}

fn walk(inner: &mut BufReader<File>) -> std::io::Result<Walk> {
    let mut r = Reader { inner, wide: true };
    if r.u32()? != MAGIC {
        return Ok(Walk::Done);
    }
    r.wide = r.u32()? != 1;
    let _tensors = r.len()?;
    let kvs = r.len()?;
    let mut alignment = None;
    for _ in 0..kvs {
        let key = r.string()?;
        let kind = r.u32()?;
        if key == b"general.alignment" {
            alignment = r.alignment(kind)?;
        } else {
            r.value(kind, 0)?;
        }
    }
    Ok(match alignment {
        Some(a) if !a.is_power_of_two() => Walk::BadAlignment(a),
        _ => Walk::Done,
    })
}

/// Refuses a header whose `general.alignment` is not a power of two; rewinds.
pub fn check(reader: &mut BufReader<File>) -> Result<(), String> {
    let found = walk(reader);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot rewind: {e}"))?;
    match found {
        Ok(Walk::BadAlignment(a)) => Err(format!(
            "general.alignment is {a}; it must be a power of two"
        )),
        _ => Ok(()),
    }
}
