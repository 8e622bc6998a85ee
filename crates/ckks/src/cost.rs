//! Time estimates before any key exists.
//!
//! A computation is tallied as operations by level ([`OpTally`]): key switches, rotations
//! hoisted over a shared decomposition, plaintext products, plaintexts encoded on the fly,
//! ciphertext tensor products and rescales. The shape of hybrid key switching turns each
//! into limb NTTs, limb products, key limbs expanded from seeds (compact keys) and
//! encodings ([`Work`]) at the level's limb count, and a short calibration on the backend
//! ([`UnitCosts::calibrate`]) prices those units on the machine at hand: products streamed
//! through more memory than the caches hold, encodings run in parallel as a deferred
//! transform runs them. Allocation and the rest of the memory traffic are not modelled,
//! so it is an estimate: RESULTS records how close it comes on measured networks.

use std::collections::BTreeMap;
use std::time::Instant;

use hecnn_ring::{Backend, Basis, RnsPoly, sampler};

use crate::{CkksError, CkksParams};

/// Operations at one level (counts may be fractional, e.g. averaged).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LevelOps {
    /// Full key switches (rotations, relinearizations, conjugations): decomposition,
    /// inner product with the key, division by `P`.
    pub key_switches: f64,
    /// Decompositions shared by hoisted rotations.
    pub decompositions: f64,
    /// Hoisted rotations (inner product and division by `P` over a shared decomposition).
    pub hoisted: f64,
    /// Ciphertext × plaintext products (with the accumulation).
    pub products: f64,
    /// Plaintexts encoded while the computation runs.
    pub encodes: f64,
    /// Ciphertext × ciphertext tensor products (before relinearization).
    pub tensors: f64,
    /// Rescales of a degree-1 ciphertext.
    pub rescales: f64,
}

impl LevelOps {
    fn add(&mut self, o: &Self, times: f64) {
        self.key_switches += o.key_switches * times;
        self.decompositions += o.decompositions * times;
        self.hoisted += o.hoisted * times;
        self.products += o.products * times;
        self.encodes += o.encodes * times;
        self.tensors += o.tensors * times;
        self.rescales += o.rescales * times;
    }
}

/// Operations by level.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpTally {
    levels: BTreeMap<usize, LevelOps>,
    /// Key switches by the level their key serves up to: a compact key expands its
    /// uniform halves over its own basis at every switch.
    key_levels: BTreeMap<usize, f64>,
}

impl OpTally {
    /// An empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operations at `level`, to add to.
    pub fn at(&mut self, level: usize) -> &mut LevelOps {
        self.levels.entry(level).or_default()
    }

    /// Records `switches` key switches (of any kind, already counted at their levels) made
    /// with keys serving up to `key_level`: what compact keys expand.
    pub fn keys_at(&mut self, key_level: usize, switches: f64) {
        *self.key_levels.entry(key_level).or_default() += switches;
    }

    /// Adds `other` `times` times.
    pub fn add(&mut self, other: &Self, times: f64) {
        for (&l, o) in &other.levels {
            self.at(l).add(o, times);
        }
        for (&l, &c) in &other.key_levels {
            self.keys_at(l, c * times);
        }
    }

    /// The operations by level.
    pub fn levels(&self) -> &BTreeMap<usize, LevelOps> {
        &self.levels
    }

    /// Key switches of every kind (full and hoisted).
    pub fn key_switches(&self) -> f64 {
        self.levels
            .values()
            .map(|o| o.key_switches + o.hoisted)
            .sum()
    }

    /// The limb NTTs, limb products and key limbs expanded of these operations at
    /// `params`, with keys held compact (their uniform halves expanded at every switch,
    /// over the key's own basis) or expanded once.
    pub fn work(&self, params: &CkksParams, compact_keys: bool) -> Work {
        let r = params.rlwe();
        let k = r.p().len() as f64;
        let mut w = Work::default();
        for (&level, o) in &self.levels {
            let l = (level + 1) as f64;
            let d = r.digits_at(level) as f64;
            let ext = l + k;
            // Decomposition: each digit's own limbs are copied; the other limbs of Q_l ∪ P
            // are converted from the digit (|D|·(ext − |D|) products) and taken to
            // evaluation form, which with c_1's inverse NTT makes d·ext NTTs.
            let conversion: f64 = r
                .digits()
                .iter()
                .filter(|dg| dg.start <= level)
                .map(|dg| {
                    let size = (dg.end.min(level + 1) - dg.start) as f64;
                    size * (ext - size)
                })
                .sum();
            let dec = Work {
                ntts: d * ext,
                products: conversion,
                ..Work::default()
            };
            // Inner product with the key (two parts), the automorphism, division by P
            // (P limbs to coefficients, converted, back to evaluation form) of both parts.
            let tail = Work {
                ntts: 2.0 * (k + l),
                products: 2.0 * d * ext + 2.0 * ext + 2.0 * k * l,
                ..Work::default()
            };
            w.add(&dec, o.key_switches + o.decompositions);
            w.add(&tail, o.key_switches + o.hoisted);
            w.add(&Work::products(2.0 * l), o.products);
            w.encodes += o.encodes;
            w.encode_limbs += o.encodes * l;
            w.add(&Work::products(4.0 * l), o.tensors);
            w.add(
                &Work {
                    ntts: 2.0 * l,
                    products: 2.0 * l,
                    ..Work::default()
                },
                o.rescales,
            );
        }
        if compact_keys {
            for (&key_level, &switches) in &self.key_levels {
                let limbs = (r.digits_at(key_level) * (key_level + 1 + r.p().len())) as f64;
                w.expansions += switches * limbs;
            }
        }
        w
    }
}

/// Limb-sized units of work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    /// Forward or inverse NTTs of one limb.
    pub ntts: f64,
    /// Pointwise modular products (with an addition) over one limb.
    pub products: f64,
    /// Limbs of a compact key's uniform polynomial expanded from its seed.
    pub expansions: f64,
    /// Plaintexts encoded (the special FFT and the rounding, whatever the level).
    pub encodes: f64,
    /// Limbs of the plaintexts encoded (reduction and NTT of each limb).
    pub encode_limbs: f64,
}

impl Work {
    fn products(products: f64) -> Self {
        Self {
            products,
            ..Self::default()
        }
    }

    fn add(&mut self, o: &Self, times: f64) {
        self.ntts += o.ntts * times;
        self.products += o.products * times;
        self.expansions += o.expansions * times;
        self.encodes += o.encodes * times;
        self.encode_limbs += o.encode_limbs * times;
    }
}

/// The measured time of the units of [`Work`] on one backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnitCosts {
    /// Seconds per limb NTT.
    pub ntt_s: f64,
    /// Seconds per limb product.
    pub product_s: f64,
    /// Seconds per limb of a uniform polynomial expanded from a seed.
    pub expand_s: f64,
    /// Seconds per encoding, whatever its level (the special FFT, the rounding).
    pub encode_s: f64,
    /// Seconds per limb of an encoding (the reduction into the limb, its NTT).
    pub encode_limb_s: f64,
}

impl UnitCosts {
    /// Times the units on `be` at `params`' ring degree, over as many limbs as the middle
    /// level has (so the backend's threads share the work as they do in the computation).
    /// About half a second at N = 2^16.
    ///
    /// # Errors
    /// Backend failures.
    pub fn calibrate<B: Backend>(be: &B, params: &CkksParams) -> Result<Self, CkksError> {
        let ctx = params.rlwe().ctx();
        let limbs = (params.max_level() / 2 + 1).clamp(1, ctx.q_count());
        let basis = Basis::q(limbs);
        let n = params.n();
        let word = |i: usize| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        let host: Vec<u64> = (0..limbs * n).map(word).collect();
        let mut p = RnsPoly::from_host(be, ctx, basis, &host)?.into_eval(be, ctx);
        // Enough repetitions for about 2^22 words each way; the first warmed the tables.
        let reps = (1 << 22) / (n * limbs) + 2;
        let t = Instant::now();
        for _ in 0..reps {
            p = p.into_coeff(be, ctx).into_eval(be, ctx);
        }
        let ntt_s = t.elapsed().as_secs_f64() / (2 * reps * limbs) as f64;

        // Products stream their operands from memory, as a transform's diagonals and the
        // keys do: operands cycled over more bytes than the caches hold (64 MiB).
        let count = ((64 << 20) / (limbs * n * 8)).clamp(2, 64);
        let operands: Vec<_> = (0..count)
            .map(|k| {
                let h: Vec<u64> = (0..limbs * n).map(|i| word(i + k)).collect();
                RnsPoly::from_host(be, ctx, basis, &h).map(|q| q.into_eval(be, ctx))
            })
            .collect::<Result<_, _>>()?;
        let steps = reps.max(count);
        let t = Instant::now();
        for k in 0..steps {
            let q = &operands[k % count];
            p.mul_acc(be, ctx, q, q)?;
        }
        let product_s = t.elapsed().as_secs_f64() / (steps * limbs) as f64;
        drop(operands);

        let mut out = vec![0u64; limbs * n];
        let t = Instant::now();
        for i in 0..reps {
            let seed = [i as u8; 32];
            be.install(|| sampler::expand_uniform_into(&seed, ctx, basis, &mut out));
        }
        let expand_s = t.elapsed().as_secs_f64() / (reps * limbs) as f64;

        // Encodings as a deferred transform runs them: a batch in parallel, at one limb and
        // at `limbs` limbs, fitted to a fixed part and a part per limb.
        let encoder = crate::Encoder::new(n);
        let slots = params.max_slots();
        let values: Vec<f64> = (0..slots)
            .map(|i| (word(i) % 1000) as f64 / 1000.0)
            .collect();
        let batch = 2 * be.parallelism().max(1);
        let per_encode = |level: usize| -> Result<f64, CkksError> {
            let run = || {
                be.par_map((0..batch).collect(), |_| {
                    encoder.encode_real(be, params, &values, level, params.default_scale(), slots)
                })
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
            };
            run()?; // warm the FFT tables and the allocator
            let t = Instant::now();
            for _ in 0..2 {
                run()?;
            }
            Ok(t.elapsed().as_secs_f64() / (2 * batch) as f64)
        };
        let (one, many) = (per_encode(0)?, per_encode(limbs - 1)?);
        let encode_limb_s = if limbs > 1 {
            ((many - one) / (limbs - 1) as f64).max(0.0)
        } else {
            0.0
        };
        let encode_s = (one - encode_limb_s).max(0.0);
        Ok(Self {
            ntt_s,
            product_s,
            expand_s,
            encode_s,
            encode_limb_s,
        })
    }

    /// Seconds for `w`.
    pub fn seconds(&self, w: &Work) -> f64 {
        w.ntts * self.ntt_s
            + w.products * self.product_s
            + w.expansions * self.expand_s
            + w.encodes * self.encode_s
            + w.encode_limbs * self.encode_limb_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hecnn_ring::CpuBackend;

    fn params() -> CkksParams {
        CkksParams::from_literal(&hecnn_testkit::toy_literal(11, 8), 40).unwrap()
    }

    #[test]
    fn work_grows_with_the_level_and_hoisting_saves_the_decomposition() {
        let p = params();
        let one = |level: usize, f: fn(&mut LevelOps)| {
            let mut t = OpTally::new();
            f(t.at(level));
            t.work(&p, false)
        };
        let ks = |o: &mut LevelOps| o.key_switches = 1.0;
        let hoisted = |o: &mut LevelOps| o.hoisted = 1.0;
        let (low, high) = (one(1, ks), one(7, ks));
        assert!(high.ntts > low.ntts && high.products > low.products);
        let h = one(7, hoisted);
        assert!(h.ntts < high.ntts && h.products < high.products);
        // Compact keys add the expansion of the keys' uniform halves, over the key's basis.
        let mut t = OpTally::new();
        t.at(7).key_switches = 1.0;
        assert_eq!(t.work(&p, true).expansions, 0.0);
        t.keys_at(7, 1.0);
        let at7 = t.work(&p, true).expansions;
        assert!(at7 > 0.0 && t.work(&p, false).expansions == 0.0);
        let mut low_key = OpTally::new();
        low_key.keys_at(3, 1.0);
        assert!(low_key.work(&p, true).expansions < at7);
        // Adding a tally twice doubles the work.
        let mut twice = OpTally::new();
        twice.add(&t, 2.0);
        assert_eq!(twice.work(&p, false).ntts, 2.0 * high.ntts);
        assert_eq!(twice.key_switches(), 2.0);
    }

    #[test]
    fn calibration_measures_positive_finite_costs() {
        let p = params();
        let u = UnitCosts::calibrate(&CpuBackend::new(1).unwrap(), &p).unwrap();
        assert!(u.ntt_s > 0.0 && u.ntt_s.is_finite());
        assert!(u.product_s > 0.0 && u.product_s.is_finite());
        assert!(u.expand_s > 0.0 && u.expand_s.is_finite());
        assert!(u.encode_s + u.encode_limb_s > 0.0 && u.encode_s.is_finite());
        let w = Work {
            ntts: 10.0,
            ..Work::default()
        };
        assert!((u.seconds(&w) - 10.0 * u.ntt_s).abs() < 1e-15);
    }
}
