//! The HE-standard security table (see `shared/PARAMS.md`): maximum `log2(Q·P)` for a
//! uniform ternary secret and σ = 3.2, classical security.

use serde::{Deserialize, Serialize};

/// Requested security level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SecurityLevel {
    /// 128-bit classical security (the default).
    Bits128,
    /// 192-bit classical security.
    Bits192,
    /// 256-bit classical security.
    Bits256,
    /// No check: only for reproducing published parameters that are known to be insecure,
    /// and for toy parameters in tests. Everything reports such parameters as INSECURE.
    UncheckedForReproduction,
}

impl SecurityLevel {
    /// Bits of security, or `None` when unchecked.
    pub fn bits(self) -> Option<u32> {
        match self {
            Self::Bits128 => Some(128),
            Self::Bits192 => Some(192),
            Self::Bits256 => Some(256),
            Self::UncheckedForReproduction => None,
        }
    }
}

impl std::fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.bits() {
            Some(b) => write!(f, "{b}-bit"),
            None => f.write_str("INSECURE (unchecked)"),
        }
    }
}

/// Maximum `log2(Q·P)` for ring degree `2^log_n` at the given level, or `None` if the table
/// has no entry (degree outside `2^10..2^17`, or an unchecked level).
pub fn max_log_qp(log_n: u32, level: SecurityLevel) -> Option<u32> {
    const TABLE: [(u32, [u32; 3]); 8] = [
        (10, [27, 19, 14]),
        (11, [54, 37, 29]),
        (12, [109, 75, 58]),
        (13, [218, 152, 118]),
        (14, [438, 305, 237]),
        (15, [881, 611, 476]),
        (16, [1747, 1199, 929]),
        (17, [3523, 2411, 1866]),
    ];
    let col = match level {
        SecurityLevel::Bits128 => 0,
        SecurityLevel::Bits192 => 1,
        SecurityLevel::Bits256 => 2,
        SecurityLevel::UncheckedForReproduction => return None,
    };
    TABLE
        .iter()
        .find(|(l, _)| *l == log_n)
        .map(|(_, row)| row[col])
}

/// The highest level from the table that `log_qp` meets at `2^log_n`, if any.
pub fn achieved_level(log_n: u32, log_qp: f64) -> Option<SecurityLevel> {
    [
        SecurityLevel::Bits256,
        SecurityLevel::Bits192,
        SecurityLevel::Bits128,
    ]
    .into_iter()
    .find(|&lvl| max_log_qp(log_n, lvl).is_some_and(|m| log_qp <= m as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lookups() {
        assert_eq!(max_log_qp(16, SecurityLevel::Bits128), Some(1747));
        assert_eq!(max_log_qp(14, SecurityLevel::Bits256), Some(237));
        assert_eq!(max_log_qp(9, SecurityLevel::Bits128), None);
        assert_eq!(achieved_level(14, 300.0), Some(SecurityLevel::Bits192));
        assert_eq!(achieved_level(14, 439.0), None);
    }
}
