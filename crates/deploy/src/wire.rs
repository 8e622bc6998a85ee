//! The services' binary formats, versioned and bounded:
//!
//! - `HCND`, a **deployment bundle** (owner → edge): a header, the protected model (`HCNP`),
//!   the public key and the evaluation keys. It has no field for a secret key.
//! - `HCNR`, a **result envelope** (edge → owner): which deployment, model version and input
//!   it answers, then the encrypted output (`HCNO`).
//!
//! Layout: 4-byte magic, `u16` version, `u32` header length, the header (postcard), then the
//! payloads as (`u64` length, bytes). Decoding rejects other magics and versions, lengths past
//! the end, oversized headers and trailing bytes.
//!
//! - **Stream frames** (a client → the edge's `/v1/stream`): `u16` id length, the id (UTF-8,
//!   [`check_input_id`]), `u32` pixel count, the pixels; frames follow one another in the
//!   body and may be split anywhere across its chunks ([`next_frame`], [`push_frame`]).

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

use crate::DeployError;

/// Magic of a deployment bundle.
pub const BUNDLE_MAGIC: [u8; 4] = *b"HCND";
/// Magic of a result envelope.
pub const RESULT_MAGIC: [u8; 4] = *b"HCNR";
/// Version of both formats.
pub const VERSION: u16 = 1;
/// Largest header accepted.
const MAX_HEADER: usize = 4096;
/// Longest input identifier.
pub const MAX_INPUT_ID: usize = 128;

/// Parses one stream frame from the front of `buf` if it is whole (`Ok(None)`: more bytes
/// are needed), checking its id and that it carries `pixels` pixels before waiting for them,
/// so a hostile length is refused without buffering it.
///
/// # Errors
/// [`DeployError::Wire`]: an id of 0 or more than [`MAX_INPUT_ID`] bytes, not UTF-8 or not a
/// valid input id; a pixel count other than `pixels`.
pub fn next_frame(
    buf: &mut BytesMut,
    pixels: usize,
) -> Result<Option<(String, Vec<u8>)>, DeployError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let id_len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
    if id_len == 0 || id_len > MAX_INPUT_ID {
        return Err(DeployError::Wire(format!(
            "frame: id of {id_len} bytes (1 to {MAX_INPUT_ID})"
        )));
    }
    if buf.len() < 6 + id_len {
        return Ok(None);
    }
    let n = u32::from_le_bytes([
        buf[2 + id_len],
        buf[3 + id_len],
        buf[4 + id_len],
        buf[5 + id_len],
    ]) as usize;
    let id = std::str::from_utf8(&buf[2..2 + id_len])
        .map_err(|_| DeployError::Wire("frame: the id is not UTF-8".into()))?
        .to_string();
    check_input_id(&id)?;
    if n != pixels {
        return Err(DeployError::Wire(format!(
            "frame {id}: {n} pixels, the deployed model takes {pixels}"
        )));
    }
    if buf.len() < 6 + id_len + n {
        return Ok(None);
    }
    buf.advance(6 + id_len);
    let px = buf.split_to(n).to_vec();
    Ok(Some((id, px)))
}

/// Appends one stream frame (see [`next_frame`]) to `out`.
///
/// # Errors
/// [`DeployError::Wire`]: an id the edge would refuse ([`check_input_id`]) or more than
/// `u32::MAX` pixels; `out` is left as it was.
pub fn push_frame(out: &mut Vec<u8>, id: &str, pixels: &[u8]) -> Result<(), DeployError> {
    check_input_id(id)?;
    let count = u32::try_from(pixels.len())
        .map_err(|_| DeployError::Wire(format!("frame {id}: {} pixels", pixels.len())))?;
    // check_input_id bounds the id to MAX_INPUT_ID bytes, which fits the u16 length.
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(pixels);
    Ok(())
}

/// What a deployment is: which model version, under which owner key, and how the edge
/// supplies the features.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentHeader {
    /// The owner's deployment id.
    pub deployment_id: u64,
    /// The owner's model id.
    pub model_id: u64,
    /// The model's name.
    pub model_name: String,
    /// The model's version (1, 2, … per name).
    pub model_version: u32,
    /// The owner key the model is encrypted under.
    pub key_id: [u8; 32],
    /// Whether the edge encrypts the features before the protected layers.
    pub encrypt_features: bool,
}

/// A deployment bundle: only public material.
#[derive(Clone, Debug)]
pub struct DeploymentBundle {
    /// What it deploys.
    pub header: DeploymentHeader,
    /// The protected model (`HCNP`).
    pub protected: Vec<u8>,
    /// The owner's public key for the model (to encrypt features).
    pub public_key: Vec<u8>,
    /// The evaluation keys the protected model needs.
    pub eval_keys: Vec<u8>,
}

/// Which input an encrypted result answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultHeader {
    /// The deployment that produced it.
    pub deployment_id: u64,
    /// The model it was computed with.
    pub model_id: u64,
    /// The model's version.
    pub model_version: u32,
    /// The input's identifier at the edge (see [`check_input_id`]).
    pub input_id: String,
}

/// A result envelope.
#[derive(Clone, Debug)]
pub struct ResultEnvelope {
    /// Which input it answers.
    pub header: ResultHeader,
    /// The encrypted output (`HCNO`).
    pub output: Vec<u8>,
}

/// Checks an input identifier: 1 to 128 characters of `A–Z a–z 0–9 . _ -`, not starting
/// with a dot (identifiers name files at the edge).
///
/// # Errors
/// [`DeployError::Wire`] naming the rule.
pub fn check_input_id(id: &str) -> Result<(), DeployError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_INPUT_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DeployError::Wire(format!(
            "input id {:?}: use 1 to {MAX_INPUT_ID} characters of A-Z a-z 0-9 . _ - (not starting with '.')",
            id.chars().take(40).collect::<String>()
        )))
    }
}

fn encode<H: Serialize>(
    magic: [u8; 4],
    header: &H,
    payloads: &[&[u8]],
) -> Result<Vec<u8>, DeployError> {
    let h = postcard::to_allocvec(header).map_err(|e| DeployError::Wire(e.to_string()))?;
    let total = 10 + h.len() + payloads.iter().map(|p| 8 + p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(h.len())
            .map_err(|_| DeployError::Wire("header too large".into()))?
            .to_le_bytes(),
    );
    out.extend_from_slice(&h);
    for p in payloads {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DeployError> {
        if n > self.bytes.len() {
            return Err(DeployError::Wire(format!(
                "{}: truncated (needs {n} more bytes, has {})",
                self.what,
                self.bytes.len()
            )));
        }
        let (a, b) = self.bytes.split_at(n);
        self.bytes = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DeployError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn payload(&mut self) -> Result<&'a [u8], DeployError> {
        let len = u64::from_le_bytes(self.array()?);
        let len = usize::try_from(len)
            .map_err(|_| DeployError::Wire(format!("{}: length overflow", self.what)))?;
        self.take(len)
    }
}

fn decode<'a, H: Deserialize<'a>>(
    magic: [u8; 4],
    what: &'static str,
    bytes: &'a [u8],
) -> Result<(H, Reader<'a>), DeployError> {
    let mut r = Reader { bytes, what };
    if r.array::<4>()? != magic {
        return Err(DeployError::Wire(format!(
            "not a {what} (magic {:?} expected)",
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = u16::from_le_bytes(r.array()?);
    if version != VERSION {
        return Err(DeployError::Wire(format!(
            "{what} format version {version}; this build reads version {VERSION}"
        )));
    }
    let hlen = u32::from_le_bytes(r.array()?) as usize;
    if hlen > MAX_HEADER {
        return Err(DeployError::Wire(format!(
            "{what}: header of {hlen} bytes is too large"
        )));
    }
    let h = postcard::from_bytes(r.take(hlen)?)
        .map_err(|e| DeployError::Wire(format!("{what}: malformed header: {e}")))?;
    Ok((h, r))
}

fn finish(r: &Reader<'_>) -> Result<(), DeployError> {
    if r.bytes.is_empty() {
        Ok(())
    } else {
        Err(DeployError::Wire(format!(
            "{}: {} trailing bytes",
            r.what,
            r.bytes.len()
        )))
    }
}

impl DeploymentBundle {
    /// Serializes the bundle.
    ///
    /// # Errors
    /// [`DeployError::Wire`] for an oversized header.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DeployError> {
        encode(
            BUNDLE_MAGIC,
            &self.header,
            &[&self.protected, &self.public_key, &self.eval_keys],
        )
    }

    /// Parses a bundle (the payloads are checked when the edge loads them).
    ///
    /// # Errors
    /// [`DeployError::Wire`] for another format, version, or a malformed layout.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeployError> {
        let (header, mut r) = decode::<DeploymentHeader>(BUNDLE_MAGIC, "deployment bundle", bytes)?;
        let protected = r.payload()?.to_vec();
        let public_key = r.payload()?.to_vec();
        let eval_keys = r.payload()?.to_vec();
        finish(&r)?;
        Ok(Self {
            header,
            protected,
            public_key,
            eval_keys,
        })
    }
}

impl ResultEnvelope {
    /// Serializes the envelope.
    ///
    /// # Errors
    /// [`DeployError::Wire`] for a bad input id.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DeployError> {
        check_input_id(&self.header.input_id)?;
        encode(RESULT_MAGIC, &self.header, &[&self.output])
    }

    /// Parses an envelope (the output is checked against the model by the owner).
    ///
    /// # Errors
    /// [`DeployError::Wire`] for another format, version, a bad input id or a malformed layout.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DeployError> {
        let (header, mut r) = decode::<ResultHeader>(RESULT_MAGIC, "result envelope", bytes)?;
        check_input_id(&header.input_id)?;
        let output = r.payload()?.to_vec();
        finish(&r)?;
        Ok(Self { header, output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame written by hand (`push_frame` refuses the bad ids these tests need).
    fn frame(id: &str, px: &[u8]) -> Vec<u8> {
        let mut f = (id.len() as u16).to_le_bytes().to_vec();
        f.extend_from_slice(id.as_bytes());
        f.extend_from_slice(&(px.len() as u32).to_le_bytes());
        f.extend_from_slice(px);
        f
    }

    #[test]
    fn frames_parse_across_chunk_boundaries_and_refuse_bad_ones() {
        let mut all = frame("a", &[1, 2, 3]);
        all.extend(frame("b.png", &[4, 5, 6]));
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for byte in all {
            buf.extend_from_slice(&[byte]);
            while let Some(f) = next_frame(&mut buf, 3).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![("a".into(), vec![1, 2, 3]), ("b.png".into(), vec![4, 5, 6])]
        );
        assert!(buf.is_empty());
        let mut bad = BytesMut::from(&frame("a", &[1, 2])[..]);
        assert!(next_frame(&mut bad, 3).is_err());
        let mut bad = BytesMut::from(&frame("../x", &[1, 2, 3])[..]);
        assert!(next_frame(&mut bad, 3).is_err());
        let mut bad = BytesMut::from(&[0u8, 0, 1][..]);
        assert!(next_frame(&mut bad, 3).is_err());
        // A hostile pixel count is refused from the frame's header, before its pixels.
        let mut big = BytesMut::from(&frame("a", &[])[..]);
        big[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(next_frame(&mut big, 3).is_err());
        // The writer refuses what the reader would, and writes what it reads.
        let mut out = Vec::new();
        assert!(push_frame(&mut out, "../x", &[1, 2, 3]).is_err());
        assert!(out.is_empty());
        push_frame(&mut out, "a", &[1, 2, 3]).unwrap();
        assert_eq!(out, frame("a", &[1, 2, 3]));
    }

    fn bundle() -> DeploymentBundle {
        DeploymentBundle {
            header: DeploymentHeader {
                deployment_id: 3,
                model_id: 1,
                model_name: "mnist".into(),
                model_version: 2,
                key_id: [7; 32],
                encrypt_features: true,
            },
            protected: vec![1, 2, 3],
            public_key: vec![4; 10],
            eval_keys: vec![],
        }
    }

    #[test]
    fn bundles_and_results_round_trip_and_reject_damage() {
        let b = bundle();
        let bytes = b.to_bytes().unwrap();
        let back = DeploymentBundle::from_bytes(&bytes).unwrap();
        assert_eq!(back.header, b.header);
        assert_eq!(
            (back.protected, back.public_key, back.eval_keys),
            (b.protected, b.public_key, b.eval_keys)
        );
        for cut in [0, 3, 9, bytes.len() - 1] {
            assert!(
                DeploymentBundle::from_bytes(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(DeploymentBundle::from_bytes(&long).is_err());
        let mut v2 = bytes.clone();
        v2[4] = 2;
        let e = DeploymentBundle::from_bytes(&v2).unwrap_err().to_string();
        assert!(e.contains("version 2"), "{e}");
        assert!(
            ResultEnvelope::from_bytes(&bytes).is_err(),
            "a bundle is not a result"
        );

        let r = ResultEnvelope {
            header: ResultHeader {
                deployment_id: 3,
                model_id: 1,
                model_version: 2,
                input_id: "img-0001.png".into(),
            },
            output: vec![9; 100],
        };
        let bytes = r.to_bytes().unwrap();
        let back = ResultEnvelope::from_bytes(&bytes).unwrap();
        assert_eq!((back.header, back.output), (r.header, r.output));
        // A length field pointing past the end.
        let mut bad = bytes.clone();
        let at = bad.len() - 100 - 8;
        bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ResultEnvelope::from_bytes(&bad).is_err());
    }

    #[test]
    fn input_ids_are_safe_file_names() {
        for ok in ["a", "img_01.png", "x-y.z", &"a".repeat(128)] {
            check_input_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "../etc", "a/b", "a b", &"a".repeat(129), "é"] {
            assert!(check_input_id(bad).is_err(), "{bad}");
        }
    }
}
