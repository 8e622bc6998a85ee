//! Bearer tokens: 256 random bits, shown once as hex, stored as their BLAKE3 hash and
//! compared in constant time.

use axum::http::{HeaderMap, header::AUTHORIZATION};
use zeroize::Zeroizing;

use crate::{ApiError, DeployError};

/// A bearer token (zeroized on drop).
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A fresh random token.
    ///
    /// # Errors
    /// [`DeployError::Config`] when the operating system has no randomness to give.
    pub fn generate() -> Result<Self, DeployError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut_slice())
            .map_err(|e| DeployError::Config(format!("no randomness: {e}")))?;
        Ok(Self(Zeroizing::new(hex(raw.as_slice()))))
    }

    /// A token given by the user (leading and trailing white space removed).
    ///
    /// # Errors
    /// [`DeployError::Config`] for an empty token or one with characters that cannot go in
    /// an HTTP header.
    pub fn parse(s: &str) -> Result<Self, DeployError> {
        let t = s.trim();
        if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DeployError::Config(
                "a token is at least 16 printable ASCII characters".into(),
            ));
        }
        Ok(Self(Zeroizing::new(t.to_string())))
    }

    /// Reads a token from a file (as written by the services: one line).
    ///
    /// # Errors
    /// I/O errors and malformed tokens.
    pub fn read(path: &std::path::Path) -> Result<Self, DeployError> {
        let s =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| DeployError::io(path, e))?);
        Self::parse(&s)
    }

    /// The token's text (to send it or show it once).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash under which the token is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash(*blake3::hash(self.0.as_bytes()).as_bytes())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The stored form of a token.
#[derive(Clone, Copy, Debug)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Whether `presented` is the token of this hash (constant time in the token's value).
    pub fn verify(&self, presented: &Token) -> bool {
        blake3::Hash::from(self.0) == blake3::hash(presented.0.as_bytes())
    }
}

/// The bearer token of a request.
///
/// # Errors
/// 401 when the `Authorization: Bearer …` header is missing or malformed.
pub fn bearer(headers: &HeaderMap) -> Result<Token, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    Token::parse(value).map_err(|_| ApiError::unauthorized())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_themselves() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert!(a.hash().verify(&a));
        assert!(!a.hash().verify(&b));
        assert!(Token::parse("short").is_err());
        assert!(Token::parse("has a space in the middle").is_err());
        assert_eq!(format!("{a:?}"), "Token(…)");
    }
}
