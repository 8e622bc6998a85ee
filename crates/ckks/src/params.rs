//! CKKS parameters and named presets.

use std::sync::Arc;

use hecnn_rlwe::{Params, ParamsLiteral, SecretDistribution, SecurityLevel};

use crate::CkksError;

/// CKKS parameters: checked RLWE parameters plus the default scale `2^log_scale`.
#[derive(Debug)]
pub struct CkksParams {
    rlwe: Arc<Params>,
    log_scale: u32,
}

impl CkksParams {
    /// Wraps checked RLWE parameters with a default scale.
    ///
    /// # Errors
    /// [`CkksError::InvalidScale`] if the scale is not below `q_0`.
    pub fn new(rlwe: Arc<Params>, log_scale: u32) -> Result<Self, CkksError> {
        let q0 = rlwe.q().first().copied().unwrap_or(0) as f64;
        let scale = 2f64.powi(log_scale as i32);
        if log_scale == 0 || scale >= q0 {
            return Err(CkksError::InvalidScale { scale });
        }
        Ok(Self { rlwe, log_scale })
    }

    /// Builds a literal and wraps it.
    ///
    /// # Errors
    /// Parameter generation and security-check failures.
    pub fn from_literal(lit: &ParamsLiteral, log_scale: u32) -> Result<Self, CkksError> {
        Self::new(Arc::new(lit.build()?), log_scale)
    }

    /// The RLWE parameters.
    pub fn rlwe(&self) -> &Arc<Params> {
        &self.rlwe
    }
    /// Ring degree.
    pub fn n(&self) -> usize {
        self.rlwe.n()
    }
    /// Maximum number of complex slots (`n/2`).
    pub fn max_slots(&self) -> usize {
        self.rlwe.n() / 2
    }
    /// Highest level.
    pub fn max_level(&self) -> usize {
        self.rlwe.max_level()
    }
    /// log2 of the default scale.
    pub fn log_scale(&self) -> u32 {
        self.log_scale
    }
    /// The default scale `2^log_scale`.
    pub fn default_scale(&self) -> f64 {
        2f64.powi(self.log_scale as i32)
    }
    /// The prime `q_level` (dropped by the next rescale at `level`).
    pub fn q_at(&self, level: usize) -> f64 {
        self.rlwe.q().get(level).copied().unwrap_or(1) as f64
    }
}

/// A named parameter preset. Names carry N, the total `log2(QP)` and, where not 128-bit, the
/// security level. All use a uniform ternary secret, σ = 3.2, primes below 2^50 (the fast
/// IFMA NTT path), and scale 2^40.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Preset {
    /// N = 2^13, 3 levels, 128-bit.
    N13Qp218,
    /// N = 2^14, 7 levels, 128-bit.
    N14Qp427,
    /// N = 2^15, 16 levels, 128-bit.
    N15Qp836,
    /// N = 2^16, 24 levels, dnum 3, 128-bit.
    N16Qp1401,
    /// N = 2^14, 5 levels, 192-bit.
    N14Qp298S192,
    /// N = 2^16, 20 levels, 192-bit.
    N16Qp1143S192,
    /// N = 2^14, 3 levels, 256-bit.
    N14Qp218S256,
    /// N = 2^16, 16 levels, 256-bit.
    N16Qp885S256,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 8] = [
        Preset::N13Qp218,
        Preset::N14Qp427,
        Preset::N15Qp836,
        Preset::N16Qp1401,
        Preset::N14Qp298S192,
        Preset::N16Qp1143S192,
        Preset::N14Qp218S256,
        Preset::N16Qp885S256,
    ];

    /// The preset's name, e.g. `N14_QP427`.
    pub fn name(self) -> &'static str {
        match self {
            Preset::N13Qp218 => "N13_QP218",
            Preset::N14Qp427 => "N14_QP427",
            Preset::N15Qp836 => "N15_QP836",
            Preset::N16Qp1401 => "N16_QP1401",
            Preset::N14Qp298S192 => "N14_QP298_S192",
            Preset::N16Qp1143S192 => "N16_QP1143_S192",
            Preset::N14Qp218S256 => "N14_QP218_S256",
            Preset::N16Qp885S256 => "N16_QP885_S256",
        }
    }

    /// Looks a preset up by name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The parameter literal.
    pub fn literal(self) -> ParamsLiteral {
        let (log_n, levels, p_count, dnum, security) = match self {
            Preset::N13Qp218 => (13, 3, 1, None, SecurityLevel::Bits128),
            Preset::N14Qp427 => (14, 7, 2, None, SecurityLevel::Bits128),
            Preset::N15Qp836 => (15, 16, 3, None, SecurityLevel::Bits128),
            Preset::N16Qp1401 => (16, 24, 8, Some(3), SecurityLevel::Bits128),
            Preset::N14Qp298S192 => (14, 5, 1, None, SecurityLevel::Bits192),
            Preset::N16Qp1143S192 => (16, 20, 6, None, SecurityLevel::Bits192),
            Preset::N14Qp218S256 => (14, 3, 1, None, SecurityLevel::Bits256),
            Preset::N16Qp885S256 => (16, 16, 4, None, SecurityLevel::Bits256),
        };
        let mut log_q = vec![49];
        log_q.extend(std::iter::repeat_n(40, levels));
        ParamsLiteral {
            log_n,
            log_q,
            log_p: vec![49; p_count],
            dnum,
            secret: SecretDistribution::Ternary,
            security,
        }
    }

    /// Builds the checked parameters.
    ///
    /// # Errors
    /// Never for the shipped presets (they are checked in tests); kept fallible because the
    /// security check runs on the generated primes.
    pub fn build(self) -> Result<Arc<CkksParams>, CkksError> {
        Ok(Arc::new(CkksParams::from_literal(&self.literal(), 40)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_build_and_match_their_names() {
        for p in Preset::ALL {
            let params = p.build().unwrap();
            let qp = params.rlwe().log_qp().round() as u32;
            assert!(
                p.name().contains(&format!("QP{qp}")),
                "{} has log QP {qp}",
                p.name()
            );
            assert_eq!(Preset::from_name(&p.name().to_lowercase()), Some(p));
        }
    }
}
