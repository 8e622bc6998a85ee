//! Exact integer inference in BFV, batch-packed as HCNN runs it: one image per slot (`N`
//! images per evaluation), one ciphertext per neuron, integer weights as scalars, squares as
//! ciphertext products. Decrypted outputs equal the integer executor's
//! ([`QuantModel::run`]) bit for bit.
//!
//! **Plaintext modulus.** Every layer is a ring operation, so the network computed modulo
//! `t` yields the integer outputs modulo `t`; decryption recovers them exactly when `t`
//! exceeds twice their worst-case magnitude ([`QuantModel::bounds`]). When one prime `t`
//! cannot be that large (the noise of a larger `t` grows with it: each product costs about
//! `log2 t + 10` bits of budget), the plan splits the plaintext space over several primes
//! `t_i ≡ 1 (mod 2N)` (plaintext CRT, as HCNN does for CIFAR-10): one BFV instance per
//! prime, all under **one secret key** (the instances share the ring and its primes, so the
//! evaluation keys serve them all), residues recombined by [`Crt`].
//!
//! **Parameters.** [`plan`] tries rings within the security bound (ring degree `2^13` to
//! `2^15`, ciphertext primes below `2^50` so the AVX-512 IFMA kernels apply), finds for each
//! the largest `t` whose predicted output budget ([`hecnn_bfv::NoiseModel`]) keeps the
//! margin, and keeps the ring with the lowest cost per image (instances × ciphertext
//! primes). It refuses, with the bound, when nothing fits.
//!
//! **Relinearization.** A square's degree-2 product is relinearized at once, or, when the
//! next linear layer has fewer outputs than inputs (a classifier after its last square), the
//! layer sums the degree-2 products and relinearizes each sum: one key switch per output.

mod crt;
mod files;
mod run;

pub use crt::{Crt, MAX_CRT_BITS};
pub use files::{
    MAX_BATCH_BYTES, MAX_PLAN_BYTES, MAX_PLAN_LAYERS, MAX_PLAN_TERMS, batch_from_bytes,
    batch_to_bytes,
};
pub use run::{BfvClient, BfvServer, Decrypted, EXHAUSTED_BELOW_BITS, LayerDone, OnLayer};

use std::sync::Arc;

use hecnn_bfv::NoiseModel;
use hecnn_rlwe::{Params, ParamsLiteral, SecretDistribution, SecurityLevel};

use crate::{
    NnError,
    quant::{QuantLayer, QuantModel},
};

/// How [`plan`] chooses parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct BfvOptions {
    /// Security of the ring (checked against the HE standard's table).
    pub security: SecurityLevel,
    /// The smallest predicted noise budget (bits) the output may have. The estimate is
    /// within 1 bit on the optimistic side of the measurement (see [`hecnn_bfv::noise`]).
    pub margin_bits: f64,
    /// A fixed ring (reproductions, tests with small degrees); `None`: the planner chooses.
    pub ring: Option<ParamsLiteral>,
    /// Most plaintext moduli (BFV instances).
    pub max_moduli: usize,
}

impl Default for BfvOptions {
    fn default() -> Self {
        Self {
            security: SecurityLevel::Bits128,
            margin_bits: 3.0,
            ring: None,
            max_moduli: 8,
        }
    }
}

/// A checked BFV plan: the quantized network, the ring, the plaintext moduli, when each
/// square is relinearized, and the predicted noise budget after every layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BfvPlan {
    quant: QuantModel,
    ring: ParamsLiteral,
    moduli: Vec<u64>,
    /// Per layer: a square relinearized after the next linear layer.
    lazy: Vec<bool>,
    /// Per layer: the predicted budget (bits) of the worst instance.
    budgets: Vec<f64>,
    /// Largest output magnitude (worst case over the quantized input range).
    output_bound: u128,
    /// Largest intermediate magnitude.
    largest_bound: u128,
}

/// Smallest plaintext modulus the planner tries (bits).
const MIN_T_BITS: u32 = 17;
/// Largest plaintext modulus (bits; [`hecnn_bfv`] takes `t < 2^60`).
const MAX_T_BITS: u32 = 59;
/// Ciphertext primes stay below `2^50` (the IFMA kernels' bound).
const MAX_Q_BITS: u32 = 49;
/// A relinearization costs about this many scalar multiply-adds of one ciphertext
/// component (decides lazy relinearization; a rough figure, not a measurement).
const RELIN_COST_TERMS: usize = 128;

impl BfvPlan {
    /// The quantized network.
    pub fn quant(&self) -> &QuantModel {
        &self.quant
    }
    /// The ring's parameter literal.
    pub fn ring(&self) -> &ParamsLiteral {
        &self.ring
    }
    /// The plaintext moduli, one BFV instance each.
    pub fn moduli(&self) -> &[u64] {
        &self.moduli
    }
    /// Whether layer `i` (a square) is relinearized after the next linear layer.
    pub fn lazy(&self, i: usize) -> bool {
        self.lazy.get(i).copied().unwrap_or(false)
    }
    /// The predicted noise budget after every layer (bits, worst instance).
    pub fn budgets(&self) -> &[f64] {
        &self.budgets
    }
    /// The worst-case output magnitude: `Π t_i` exceeds twice it.
    pub fn output_bound(&self) -> u128 {
        self.output_bound
    }
    /// The worst-case magnitude of any intermediate value (informative: values may wrap
    /// modulo `t` in between).
    pub fn largest_bound(&self) -> u128 {
        self.largest_bound
    }
    /// Images per evaluation (the ring degree: BFV batching fills all `N` slots).
    pub fn slots(&self) -> usize {
        1 << self.ring.log_n
    }
    /// Builds the ring's checked parameters.
    ///
    /// # Errors
    /// [`NnError::Bfv`] if the literal does not build (an altered plan).
    pub fn rlwe(&self) -> Result<Arc<Params>, NnError> {
        Ok(Arc::new(
            self.ring
                .build()
                .map_err(|e| bfv_error(self.quant.name(), e.into()))?,
        ))
    }

    /// A human-readable summary: ring, moduli, bounds, predicted budgets.
    pub fn report(&self) -> String {
        use std::fmt::Write;
        let r = &self.ring;
        let bits = |v: u128| u128::BITS - v.leading_zeros();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "BFV batch plan: N = 2^{} ({} images per evaluation), {} ciphertext primes of {:?} bits, {} special, {}",
            r.log_n,
            self.slots(),
            r.log_q.len(),
            r.log_q,
            r.log_p.len(),
            r.security
        );
        let _ = writeln!(
            s,
            "plaintext: {} prime(s) {:?} ({:.1} bits in all) for outputs within ±2^{} (worst case; largest intermediate 2^{})",
            self.moduli.len(),
            self.moduli,
            self.moduli.iter().map(|&t| (t as f64).log2()).sum::<f64>(),
            bits(self.output_bound),
            bits(self.largest_bound)
        );
        for (i, (layer, b)) in self.quant.layers().iter().zip(&self.budgets).enumerate() {
            let kind = match layer {
                QuantLayer::Linear { rows, .. } => format!("linear, {} outputs", rows.len()),
                QuantLayer::Square { .. } if self.lazy(i) => {
                    "x², relinearized after the next layer".into()
                }
                QuantLayer::Square { .. } => "x²".into(),
            };
            let _ = writeln!(
                s,
                "  {:<12} {kind}: predicted budget {b:.1} bits",
                layer.node()
            );
        }
        s
    }
}

/// Ciphertexts per BFV instance (`[instance][k]`: one instance per plaintext modulus).
pub type Instances<B> = Vec<Vec<hecnn_bfv::Ciphertext<B>>>;

/// A BFV error at `node`.
pub(crate) fn bfv_error(node: &str, e: hecnn_bfv::BfvError) -> NnError {
    NnError::Encrypted {
        node: node.into(),
        source: e.into(),
    }
}

/// Whether plaintext moduli of product `product` recover every integer in
/// `[−bound, bound]` exactly (`product > 2·bound`, in exact integer arithmetic).
pub(crate) fn holds(product: u128, bound: u128) -> bool {
    bound.checked_mul(2).is_some_and(|twice| product > twice)
}

/// Per layer: whether a square's relinearization waits for the next linear layer.
pub(crate) fn lazy_squares(quant: &QuantModel) -> Vec<bool> {
    let layers = quant.layers();
    let mut width = quant.input_len();
    let mut lazy = vec![false; layers.len()];
    for (i, layer) in layers.iter().enumerate() {
        match layer {
            QuantLayer::Linear { rows, .. } => width = rows.len(),
            QuantLayer::Square { .. } => {
                if let Some(QuantLayer::Linear { rows, .. }) = layers.get(i + 1) {
                    let terms: usize = rows.iter().map(|r| r.terms.len()).sum();
                    lazy[i] = rows.len() * RELIN_COST_TERMS + terms < width * RELIN_COST_TERMS;
                }
            }
        }
    }
    lazy
}

/// The predicted budget after every layer for plaintext modulus `t` on `rlwe`.
pub(crate) fn predict(
    rlwe: &Params,
    t: u64,
    quant: &QuantModel,
    lazy: &[bool],
) -> Result<Vec<f64>, hecnn_bfv::BfvError> {
    let mut est = NoiseModel::for_modulus(rlwe, t).fresh_sk();
    let mut out = Vec::with_capacity(quant.layers().len());
    for (i, layer) in quant.layers().iter().enumerate() {
        match layer {
            QuantLayer::Square { .. } => {
                est = est.square()?;
                if !lazy[i] {
                    est = est.relinearize()?;
                }
            }
            QuantLayer::Linear { rows, .. } => {
                let norm = rows
                    .iter()
                    .map(|r| {
                        r.terms
                            .iter()
                            .map(|&(_, w)| (w as f64).powi(2))
                            .sum::<f64>()
                    })
                    .fold(0.0f64, f64::max);
                est = est.mul_plain_norm(norm.max(1.0)).add_plain();
                if est.degree() == 2 {
                    est = est.relinearize()?;
                }
            }
        }
        out.push(est.budget_bits());
    }
    Ok(out)
}

/// The rings the planner tries at `security`.
pub(crate) fn candidate_rings(security: SecurityLevel) -> Vec<ParamsLiteral> {
    let mut out = Vec::new();
    for log_n in 13..=15 {
        let Some(bound) = hecnn_rlwe::security::max_log_qp(log_n, security) else {
            continue;
        };
        for l in 2..=10u32 {
            let p = if l <= 4 { 1 } else { 2 };
            let bits = (bound / (l + p)).min(MAX_Q_BITS);
            if bits < 30 {
                break;
            }
            out.push(ParamsLiteral {
                log_n,
                log_q: vec![bits; l as usize],
                log_p: vec![bits; p as usize],
                dnum: None,
                secret: SecretDistribution::Ternary,
                security,
            });
        }
    }
    out
}

/// A candidate: its ring, moduli and predicted budgets.
pub(crate) struct Candidate {
    pub(crate) ring: ParamsLiteral,
    pub(crate) moduli: Vec<u64>,
    pub(crate) budgets: Vec<f64>,
    pub(crate) cost: usize,
}

/// Smallest budget of a plan's layers.
pub(crate) fn floor_budget(budgets: &[f64]) -> f64 {
    budgets.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Fits plaintext moduli on one ring, if the noise allows: `predict` gives the budget
/// after every layer for one plaintext modulus on the ring.
pub(crate) fn fit_ring(
    ring: &ParamsLiteral,
    predict: impl Fn(&Params, u64) -> Result<Vec<f64>, hecnn_bfv::BfvError>,
    bound: u128,
    opts: &BfvOptions,
) -> Result<Option<Candidate>, NnError> {
    let need_bits = ((2.0 * bound as f64) + 2.0).log2();
    let bfv = |e: hecnn_bfv::BfvError| bfv_error("parameters", e);
    let rlwe = ring.build().map_err(|e| bfv(e.into()))?;
    let ok = |t: u64| -> Result<Option<Vec<f64>>, NnError> {
        let b = predict(&rlwe, t).map_err(bfv)?;
        Ok((floor_budget(&b) >= opts.margin_bits).then_some(b))
    };
    // The largest t (by bits) that keeps the margin; the budget falls as t grows.
    let Some(max_bits) = (MIN_T_BITS..=MAX_T_BITS)
        .rev()
        .find(|&b| matches!(ok((1u64 << b) - 1), Ok(Some(_))))
    else {
        return Ok(None);
    };
    let taken: Vec<u64> = rlwe.q().iter().chain(rlwe.p()).copied().collect();
    // k primes below 2^b, each at least 2^(b−1).
    let k = (need_bits / (max_bits - 1) as f64).ceil().max(1.0) as usize;
    if k > opts.max_moduli {
        return Ok(None);
    }
    for b in ((need_bits / k as f64).ceil() as u32).max(MIN_T_BITS)..=max_bits {
        let Ok(moduli) = hecnn_ring::prime::ntt_primes_excluding(b, ring.log_n, k, &taken) else {
            continue;
        };
        if !Crt::new(&moduli).is_ok_and(|c| holds(c.product(), bound)) {
            continue;
        }
        let mut worst: Option<Vec<f64>> = None;
        for &t in &moduli {
            let Some(b) = ok(t)? else {
                return Ok(None);
            };
            if worst
                .as_ref()
                .is_none_or(|w| floor_budget(&b) < floor_budget(w))
            {
                worst = Some(b);
            }
        }
        return Ok(worst.map(|budgets| Candidate {
            ring: ring.clone(),
            cost: k * ring.log_q.len(),
            moduli,
            budgets,
        }));
    }
    Ok(None)
}

/// Plans BFV batch inference of a quantized network: bounds its outputs, picks the ring and
/// the plaintext moduli, predicts the noise budget of every layer.
///
/// # Errors
/// [`NnError::OutOfRange`] when the outputs need more than 126 bits of plaintext, or no
/// ring at the requested security holds the network's noise with enough plaintext bits
/// (the message gives both); errors of the bounds.
pub fn plan(quant: QuantModel, opts: &BfvOptions) -> Result<BfvPlan, NnError> {
    let bounds = quant.bounds()?;
    let output_bound = bounds.output_magnitude();
    // Π t_i must exceed 2·bound + 1 for the centered residues to be exact.
    let need_bits = ((2.0 * output_bound as f64) + 2.0).log2();
    if need_bits > (MAX_CRT_BITS - 1) as f64 {
        return Err(NnError::OutOfRange {
            node: quant.name().into(),
            value: output_bound as f64,
            bound: 2f64.powi(MAX_CRT_BITS as i32 - 2),
            what: "output magnitude plaintext CRT can hold (quantize to fewer bits)",
        });
    }
    let lazy = lazy_squares(&quant);
    let rings = match &opts.ring {
        Some(r) => vec![r.clone()],
        None => candidate_rings(opts.security),
    };
    let mut best: Option<Candidate> = None;
    for ring in &rings {
        let predict = |rlwe: &Params, t| predict(rlwe, t, &quant, &lazy);
        if let Some(c) = fit_ring(ring, predict, output_bound, opts)?
            && best.as_ref().is_none_or(|b| c.cost < b.cost)
        {
            best = Some(c);
        }
    }
    let Some(best) = best else {
        return Err(NnError::NoBfvParameters {
            security: opts.security,
            need_bits,
            reason: format!(
                "no ring of {} tried keeps a predicted noise budget of {} bits with at most \
                 {} plaintext primes; quantize to fewer bits or use a shallower network",
                rings.len(),
                opts.margin_bits,
                opts.max_moduli
            ),
        });
    };
    Ok(BfvPlan {
        largest_bound: bounds.largest_magnitude().max(output_bound),
        quant,
        ring: best.ring,
        moduli: best.moduli,
        lazy,
        budgets: best.budgets,
        output_bound,
    })
}
