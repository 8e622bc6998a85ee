//! The envelope every compiler artifact is stored in: a magic number, a format version, the
//! postcard-encoded body and a BLAKE3 checksum of the body, read through a size bound.
//!
//! ```text
//! magic [4] | version u8 | body length u64 LE | body | blake3(header | body) [32]
//! ```
//! The version is one byte where earlier formats (postcard, a varint) had it too, so a file
//! of any version is named by its version. The checksum covers the header.

use std::io::Read;
use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};

use crate::NnError;

/// What an envelope holds, for messages and checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kind {
    /// The artifact's name in messages.
    pub what: &'static str,
    /// Its magic number.
    pub magic: [u8; 4],
    /// The format version this build writes and reads.
    pub version: u8,
    /// What to do with another version.
    pub remedy: &'static str,
    /// The largest envelope accepted (bytes).
    pub limit: u64,
}

const HEADER: usize = 4 + 1 + 8;
const CHECKSUM: usize = 32;

fn checksum(header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(header);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Serializes `body` into an envelope of `kind`.
pub(crate) fn seal<T: Serialize>(kind: Kind, body: &T) -> Result<Vec<u8>, NnError> {
    let body = postcard::to_allocvec(body).map_err(|e| NnError::Format {
        what: kind.what,
        reason: format!("cannot serialize: {e}"),
    })?;
    let mut out = Vec::with_capacity(HEADER + body.len() + CHECKSUM);
    out.extend_from_slice(&kind.magic);
    out.push(kind.version);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let sum = checksum(&out, &body);
    out.extend_from_slice(&body);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Whether `bytes` start with `kind`'s magic number.
pub(crate) fn is(kind: Kind, bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&kind.magic[..])
}

/// Checks and opens an envelope of `kind`: its size bound, magic, version, length and
/// checksum, then the body. Trailing bytes are refused.
pub(crate) fn open<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, NnError> {
    let (value, rest) = postcard::take_from_bytes(checked_body(kind, bytes)?)
        .map_err(|e| format_error(kind, e.to_string()))?;
    if !rest.is_empty() {
        return Err(format_error(
            kind,
            format!("{} bytes after the body", rest.len()),
        ));
    }
    Ok(value)
}

/// Checks an envelope of `kind` as [`open`] does and reads only the leading fields of its
/// body (`T` is a prefix of the stored structure), without decoding the rest.
pub(crate) fn open_prefix<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, NnError> {
    let (value, _) = postcard::take_from_bytes(checked_body(kind, bytes)?)
        .map_err(|e| format_error(kind, e.to_string()))?;
    Ok(value)
}

fn format_error(kind: Kind, reason: String) -> NnError {
    NnError::Format {
        what: kind.what,
        reason,
    }
}

/// The body of an envelope of `kind` once its size bound, magic, version, length and
/// checksum pass.
fn checked_body(kind: Kind, bytes: &[u8]) -> Result<&[u8], NnError> {
    if bytes.len() as u64 > kind.limit {
        return Err(NnError::TooLarge {
            what: kind.what.into(),
            size: bytes.len() as u64,
            limit: kind.limit,
        });
    }
    let bad = |reason: String| format_error(kind, reason);
    let header = bytes
        .get(..HEADER)
        .ok_or_else(|| bad(format!("{} bytes, too short", bytes.len())))?;
    if header[..4] != kind.magic {
        return Err(bad(format!(
            "not a hecnn {} (magic {:?}, expected {:?})",
            kind.what,
            String::from_utf8_lossy(&header[..4]),
            String::from_utf8_lossy(&kind.magic)
        )));
    }
    if header[4] != kind.version {
        return Err(NnError::Version {
            what: kind.what,
            found: header[4],
            expected: kind.version,
            remedy: kind.remedy,
        });
    }
    let len = u64::from_le_bytes(header[5..13].try_into().map_err(|_| bad("header".into()))?);
    let expected = (HEADER as u64)
        .checked_add(len)
        .and_then(|n| n.checked_add(CHECKSUM as u64));
    if expected != Some(bytes.len() as u64) {
        return Err(bad(format!(
            "{} bytes, the header announces a body of {len} (truncated or extended)",
            bytes.len()
        )));
    }
    let body = &bytes[HEADER..bytes.len() - CHECKSUM];
    if checksum(header, body)[..] != bytes[bytes.len() - CHECKSUM..] {
        return Err(NnError::Checksum { what: kind.what });
    }
    Ok(body)
}

/// Reads a regular file of at most `limit` bytes: devices, pipes and directories are
/// refused, and the file is read through a bounded reader (a size the file system reports
/// is checked first but not trusted: a file may grow while it is read).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, NnError> {
    let f = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    let meta = f.metadata().map_err(|e| NnError::io(path, e))?;
    if !meta.is_file() {
        return Err(NnError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    if meta.len() > limit {
        return Err(NnError::TooLarge {
            what: path.display().to_string(),
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| NnError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(NnError::TooLarge {
            what: path.display().to_string(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: Kind = Kind {
        what: "test artifact",
        magic: *b"TEST",
        version: 3,
        remedy: "make it again",
        limit: 1 << 20,
    };

    #[test]
    fn every_flipped_bit_is_refused() {
        let bytes = seal(KIND, &(7u32, String::from("body"))).unwrap();
        let back: (u32, String) = open(KIND, &bytes).unwrap();
        assert_eq!(back, (7, "body".into()));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(open::<(u32, String)>(KIND, &b).is_err(), "bit {i} accepted");
        }
    }

    #[test]
    fn a_prefix_is_read_only_after_the_whole_envelope_is_checked() {
        let bytes = seal(KIND, &(7u32, String::from("head"), vec![9u8; 100])).unwrap();
        let head: (u32, String) = open_prefix(KIND, &bytes).unwrap();
        assert_eq!(head, (7, "head".into()));
        assert!(open::<(u32, String)>(KIND, &bytes).is_err());
        // A flipped bit in the part not decoded is still caught by the checksum.
        let mut b = bytes.clone();
        let i = b.len() - CHECKSUM - 10;
        b[i] ^= 1;
        assert!(matches!(
            open_prefix::<(u32, String)>(KIND, &b),
            Err(NnError::Checksum { .. })
        ));
    }

    #[test]
    fn truncation_and_other_versions_are_named() {
        let bytes = seal(KIND, &1u8).unwrap();
        assert!(matches!(
            open::<u8>(KIND, &bytes[..bytes.len() - 1]),
            Err(NnError::Format { .. })
        ));
        // A file of an earlier format (postcard: magic, then the version as a varint).
        assert!(matches!(
            open::<u8>(KIND, b"TEST\x02 and whatever version 2 held"),
            Err(NnError::Version { found: 2, .. })
        ));
        let other = Kind { version: 2, ..KIND };
        assert!(matches!(
            open::<u8>(other, &bytes),
            Err(NnError::Version {
                found: 3,
                expected: 2,
                ..
            })
        ));
    }
}
