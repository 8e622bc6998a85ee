//! The exact integer executor and the worst-case bounds of every layer.

use super::{QuantLayer, QuantModel};
use crate::NnError;

/// The interval of one layer's values over every input in the quantized range.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerBound {
    /// The layer's source node.
    pub node: String,
    /// Smallest value of any neuron.
    pub lo: i128,
    /// Largest value of any neuron.
    pub hi: i128,
}

impl LayerBound {
    /// `max(|lo|, |hi|)`.
    pub fn magnitude(&self) -> u128 {
        self.lo.unsigned_abs().max(self.hi.unsigned_abs())
    }
    /// Bits of the magnitude: every value lies in `(−2^bits, 2^bits)`.
    pub fn bits(&self) -> u32 {
        u128::BITS - self.magnitude().leading_zeros()
    }
}

/// Worst-case bounds: per layer, and per output neuron.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounds {
    /// One per layer, in order.
    pub layers: Vec<LayerBound>,
    /// `(lo, hi)` per output.
    pub outputs: Vec<(i128, i128)>,
}

impl Bounds {
    /// The largest magnitude of any output: what the plaintext modulus must exceed twice.
    pub fn output_magnitude(&self) -> u128 {
        self.outputs
            .iter()
            .map(|&(lo, hi)| lo.unsigned_abs().max(hi.unsigned_abs()))
            .max()
            .unwrap_or(0)
    }
    /// The largest magnitude of any intermediate value.
    pub fn largest_magnitude(&self) -> u128 {
        self.layers
            .iter()
            .map(LayerBound::magnitude)
            .max()
            .unwrap_or(0)
    }
}

/// A value that left the `i128` range (its exact size is not known: the operation failed).
fn overflow(node: &str) -> NnError {
    NnError::OutOfRange {
        node: node.into(),
        value: f64::INFINITY,
        bound: 2f64.powi(127),
        what: "range of the 128-bit integer executor (the value overflowed it)",
    }
}

impl QuantModel {
    /// Runs the integer network on a quantized input (see [`QuantModel::quantize_input`]),
    /// exactly.
    ///
    /// # Errors
    /// [`NnError::Shape`] for an input of the wrong length; [`NnError::OutOfRange`] if a
    /// value leaves the `i128` range (the [`QuantModel::bounds`] of a network that passes
    /// them never does).
    pub fn run(&self, x: &[i64]) -> Result<Vec<i128>, NnError> {
        if x.len() != self.input_len() {
            return Err(NnError::Shape(format!(
                "{} input values for a model of {}",
                x.len(),
                self.input_len()
            )));
        }
        let mut v: Vec<i128> = x.iter().map(|&a| a as i128).collect();
        for layer in &self.layers {
            v = match layer {
                QuantLayer::Square { node } => v
                    .iter()
                    .map(|&a| a.checked_mul(a).ok_or_else(|| overflow(node)))
                    .collect::<Result<_, _>>()?,
                QuantLayer::Linear { node, rows } => rows
                    .iter()
                    .map(|r| {
                        r.terms.iter().try_fold(r.bias, |acc, &(i, w)| {
                            let x = v.get(i as usize).ok_or_else(|| {
                                NnError::Internal(format!("'{node}': input {i} out of range"))
                            })?;
                            x.checked_mul(w as i128)
                                .and_then(|p| acc.checked_add(p))
                                .ok_or_else(|| overflow(node))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            };
        }
        Ok(v)
    }

    /// Worst-case intervals of every layer over every input in the quantized input range
    /// (interval arithmetic: exact for the first linear layer, an upper bound after).
    ///
    /// # Errors
    /// [`NnError::OutOfRange`] if a bound leaves the `i128` range.
    pub fn bounds(&self) -> Result<Bounds, NnError> {
        let q = self.input;
        let mut v: Vec<(i128, i128)> = vec![(q.lo as i128, q.hi as i128); self.input_len()];
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let node = layer.node();
            v = match layer {
                QuantLayer::Square { .. } => v
                    .iter()
                    .map(|&(lo, hi)| {
                        let (a, b) = (lo.checked_mul(lo), hi.checked_mul(hi));
                        let (a, b) = (
                            a.ok_or_else(|| overflow(node))?,
                            b.ok_or_else(|| overflow(node))?,
                        );
                        let low = if lo <= 0 && hi >= 0 { 0 } else { a.min(b) };
                        Ok((low, a.max(b)))
                    })
                    .collect::<Result<_, NnError>>()?,
                QuantLayer::Linear { rows, .. } => rows
                    .iter()
                    .map(|r| {
                        r.terms
                            .iter()
                            .try_fold((r.bias, r.bias), |(lo, hi), &(i, w)| {
                                let &(a, b) = v.get(i as usize).ok_or_else(|| {
                                    NnError::Internal(format!("'{node}': input {i} out of range"))
                                })?;
                                let w = w as i128;
                                let (p, q) = (
                                    a.checked_mul(w).ok_or_else(|| overflow(node))?,
                                    b.checked_mul(w).ok_or_else(|| overflow(node))?,
                                );
                                Ok((
                                    lo.checked_add(p.min(q)).ok_or_else(|| overflow(node))?,
                                    hi.checked_add(p.max(q)).ok_or_else(|| overflow(node))?,
                                ))
                            })
                    })
                    .collect::<Result<_, NnError>>()?,
            };
            layers.push(LayerBound {
                node: node.into(),
                lo: v.iter().map(|&(lo, _)| lo).min().unwrap_or(0),
                hi: v.iter().map(|&(_, hi)| hi).max().unwrap_or(0),
            });
        }
        Ok(Bounds { layers, outputs: v })
    }
}
