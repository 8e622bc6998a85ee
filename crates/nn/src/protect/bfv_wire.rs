//! Versioned byte formats of BFV protected models, their results and the owner's plan.
//! Loading checks the magic, the version, the ring (rebuilt from its literal, security
//! checked as the literal states), the plaintext moduli (batching primes, pairwise
//! coprime), the features' quantization, that the layers chain and fit the slots, and that
//! every ciphertext has the count, parameters, level and degree the layout implies: a
//! malformed or mismatched file is an error, never a wrong answer.

use std::sync::Arc;

use hecnn_bfv::{BatchEncoder, BfvParams, Ciphertext};
use hecnn_ring::Backend;
use hecnn_rlwe::ParamsLiteral;
use serde::{Deserialize, Serialize};

use super::MAX_PROTECTED_LAYERS;
use super::bfv::{BfvProtectPlan, BfvProtectedModel, BfvProtectedOutput, EncryptedLayer};
use crate::bfv_batch::{Crt, bfv_error};
use crate::quant::{InputQuant, MAX_QUANT_BITS, QuantModel};
use crate::{NnError, onnx};

/// First bytes of a BFV protected-model file.
pub const BFV_PROTECTED_MAGIC: [u8; 4] = *b"HCNB";
/// First bytes of a BFV protected model's encrypted result.
pub const BFV_OUTPUT_MAGIC: [u8; 4] = *b"HCBO";
/// First bytes of the owner's BFV plan (the quantized weights: the owner's only).
pub const BFV_OWNER_MAGIC: [u8; 4] = *b"HCBP";
/// Version of the three formats.
pub const BFV_WIRE_VERSION: u16 = 1;
/// Most plaintext moduli a file may declare.
pub const MAX_BFV_MODULI: usize = 16;

#[derive(Serialize, Deserialize)]
struct ModelFile {
    magic: [u8; 4],
    version: u16,
    prefix: Vec<u8>,
    scope: String,
    features: u64,
    layers: Vec<LayerFile>,
    literal: ParamsLiteral,
    moduli: Vec<u64>,
    /// The features' quantization: scale, smallest and largest integer.
    input: (f64, i64, i64),
    key_id: [u8; 32],
    /// `[instance][layer]`.
    instances: Vec<Vec<LayerCts>>,
}

/// One protected layer: its output count and the shift of the square after it.
#[derive(Serialize, Deserialize)]
struct LayerFile {
    outputs: u64,
    square: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct LayerCts {
    weights: Vec<Vec<u8>>,
    biases: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct OutputFile {
    magic: [u8; 4],
    version: u16,
    key_id: [u8; 32],
    moduli: Vec<u64>,
    /// `[instance][ciphertext]`.
    cts: Vec<Vec<Vec<u8>>>,
}

#[derive(Serialize, Deserialize)]
struct OwnerFile {
    magic: [u8; 4],
    version: u16,
    key_id: [u8; 32],
    quant: QuantModel,
    literal: ParamsLiteral,
    moduli: Vec<u64>,
    budgets: Vec<f64>,
    by_features: [Vec<f64>; 2],
    output_bound: u128,
}

fn malformed(what: impl std::fmt::Display) -> NnError {
    NnError::Format {
        what: "BFV protected model",
        reason: what.to_string(),
    }
}

fn check_header(magic: [u8; 4], want: [u8; 4], version: u16) -> Result<(), NnError> {
    if magic != want {
        return Err(malformed(format!(
            "not a {} file",
            String::from_utf8_lossy(&want)
        )));
    }
    if version != BFV_WIRE_VERSION {
        return Err(malformed(format!(
            "format version {version}, this build reads {BFV_WIRE_VERSION}"
        )));
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, NnError> {
    postcard::to_allocvec(value).map_err(|e| malformed(format!("encoding failed: {e}")))
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, NnError> {
    postcard::from_bytes(bytes).map_err(|e| malformed(format!("unreadable {what} ({e})")))
}

/// The ring and one checked BFV instance per modulus.
fn instances(literal: &ParamsLiteral, moduli: &[u64]) -> Result<Vec<Arc<BfvParams>>, NnError> {
    if moduli.is_empty() || moduli.len() > MAX_BFV_MODULI {
        return Err(malformed(format!(
            "{} plaintext moduli (1 to {MAX_BFV_MODULI})",
            moduli.len()
        )));
    }
    Crt::new(moduli).map_err(malformed)?;
    let rlwe = Arc::new(
        literal
            .build()
            .map_err(|e| bfv_error("parameters", e.into()))?,
    );
    moduli
        .iter()
        .map(|&t| {
            let p = BfvParams::new(Arc::clone(&rlwe), t).map_err(|e| bfv_error("parameters", e))?;
            // Slots are where the layout lives: a modulus without batching is refused.
            BatchEncoder::new(&p).map_err(|e| bfv_error("parameters", e))?;
            Ok(Arc::new(p))
        })
        .collect()
}

/// Loads a ciphertext of `params` and checks that it is fresh from the owner: top level,
/// degree 1.
fn load_ct<B: Backend>(
    be: &B,
    params: &BfvParams,
    bytes: &[u8],
    what: &str,
) -> Result<Ciphertext<B>, NnError> {
    let ct = Ciphertext::from_bytes(be, params, bytes).map_err(|e| bfv_error(what, e))?;
    if ct.level() != params.max_level() || ct.degree() != 1 {
        return Err(malformed(format!(
            "{what}: a ciphertext at level {}, degree {}; expected level {}, degree 1",
            ct.level(),
            ct.degree(),
            params.max_level()
        )));
    }
    Ok(ct)
}

impl<B: Backend> BfvProtectedModel<B> {
    /// Serializes the model: the cleartext feature extractor as ONNX, the public spec, the
    /// ring, the moduli, the features' quantization and the seed-compressed ciphertexts.
    ///
    /// # Errors
    /// Export or backend transfer failures.
    pub fn to_bytes(&self, be: &B) -> Result<Vec<u8>, NnError> {
        let instances = self
            .params
            .iter()
            .zip(&self.instances)
            .map(|(p, layers)| {
                let cts = |v: &[Ciphertext<B>]| {
                    v.iter()
                        .map(|c| c.to_bytes(be, p).map_err(|e| bfv_error("serialize", e)))
                        .collect::<Result<Vec<_>, _>>()
                };
                layers
                    .iter()
                    .map(|l| {
                        Ok(LayerCts {
                            weights: cts(&l.weights)?,
                            biases: cts(&l.biases)?,
                        })
                    })
                    .collect::<Result<Vec<_>, NnError>>()
            })
            .collect::<Result<Vec<_>, NnError>>()?;
        encode(&ModelFile {
            magic: BFV_PROTECTED_MAGIC,
            version: BFV_WIRE_VERSION,
            prefix: onnx::export_onnx(&self.spec.prefix)?,
            scope: self.spec.scope.name().into(),
            features: self.spec.features() as u64,
            layers: self
                .spec
                .layers
                .iter()
                .map(|l| LayerFile {
                    outputs: l.outputs as u64,
                    square: l.square,
                })
                .collect(),
            literal: self.ring.clone(),
            moduli: self.moduli.clone(),
            input: (self.input.scale, self.input.lo, self.input.hi),
            key_id: self.key_id,
            instances,
        })
    }

    /// Loads and validates a BFV protected model.
    ///
    /// # Errors
    /// [`NnError::Format`] naming what is wrong (magic, version, ring, moduli, the
    /// features' quantization, layers that do not chain or fit, ciphertext counts, levels,
    /// degrees, parameters); [`NnError::Encrypted`] for a ring or ciphertext the BFV layer
    /// refuses.
    pub fn from_bytes(be: &B, bytes: &[u8]) -> Result<Self, NnError> {
        let f: ModelFile = decode(bytes, "model")?;
        check_header(f.magic, BFV_PROTECTED_MAGIC, f.version)?;
        if f.layers.is_empty() || f.layers.len() > MAX_PROTECTED_LAYERS {
            return Err(malformed(format!(
                "{} protected layers (1 to {MAX_PROTECTED_LAYERS})",
                f.layers.len()
            )));
        }
        let (scale, lo, hi) = f.input;
        let range = 1i64 << MAX_QUANT_BITS;
        if !(scale.is_finite() && scale > 0.0 && lo <= hi && lo > -range && hi < range) {
            return Err(malformed(format!(
                "a feature quantization of scale {scale} over [{lo}, {hi}]"
            )));
        }
        let params = instances(&f.literal, &f.moduli)?;
        let spec = super::wire::read_spec(
            "BFV protected model",
            &f.prefix,
            &f.scope,
            f.features,
            f.layers.iter().map(|l| (l.outputs, l.square)),
        )?;
        let layout = spec.layout(1 << (f.literal.log_n - 1))?;
        if f.instances.len() != params.len() {
            return Err(malformed(format!(
                "{} instances of ciphertexts for {} moduli",
                f.instances.len(),
                params.len()
            )));
        }
        let mut encrypted = Vec::with_capacity(params.len());
        for (i, (p, layers)) in params.iter().zip(&f.instances).enumerate() {
            if layers.len() != layout.layers.len() {
                return Err(malformed(format!(
                    "instance {i}: {} layers of ciphertexts, the spec has {}",
                    layers.len(),
                    layout.layers.len()
                )));
            }
            let mut loaded = Vec::with_capacity(layers.len());
            for (at, (l, want)) in layers.iter().zip(&layout.layers).enumerate() {
                if l.weights.len() != want.weights || l.biases.len() != want.biases {
                    return Err(malformed(format!(
                        "instance {i}, layer {at}: {} weight and {} bias ciphertexts, the \
                         layout needs {} and {}",
                        l.weights.len(),
                        l.biases.len(),
                        want.weights,
                        want.biases
                    )));
                }
                let load = |v: &[Vec<u8>], what: &str| {
                    v.iter()
                        .map(|b| load_ct(be, p, b, &format!("layer {at} {what}")))
                        .collect::<Result<Vec<_>, _>>()
                };
                loaded.push(EncryptedLayer {
                    weights: load(&l.weights, "weights")?,
                    biases: load(&l.biases, "biases")?,
                });
            }
            encrypted.push(loaded);
        }
        Ok(Self {
            squares: spec.layers.iter().map(|l| l.square.is_some()).collect(),
            spec,
            input: InputQuant { scale, lo, hi },
            ring: f.literal,
            moduli: f.moduli,
            layout,
            key_id: f.key_id,
            params,
            instances: encrypted,
        })
    }
}

impl<B: Backend> BfvProtectedOutput<B> {
    /// Serializes the result, tagged with the owner key and the moduli of its model.
    ///
    /// # Errors
    /// Backend transfer failures; ciphertexts of other parameters than `model`'s.
    pub fn to_bytes(&self, be: &B, model: &BfvProtectedModel<B>) -> Result<Vec<u8>, NnError> {
        let cts = self
            .cts
            .iter()
            .zip(&model.params)
            .map(|(cts, p)| {
                cts.iter()
                    .map(|c| c.to_bytes(be, p).map_err(|e| bfv_error("serialize", e)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        encode(&OutputFile {
            magic: BFV_OUTPUT_MAGIC,
            version: BFV_WIRE_VERSION,
            key_id: model.key_id,
            moduli: model.moduli.clone(),
            cts,
        })
    }

    /// Loads a result of `model`.
    ///
    /// # Errors
    /// [`NnError::Format`] for a wrong magic, version, owner key, moduli or ciphertext
    /// count; ciphertexts of other parameters or degree.
    pub fn from_bytes(be: &B, model: &BfvProtectedModel<B>, bytes: &[u8]) -> Result<Self, NnError> {
        let f: OutputFile = decode(bytes, "result")?;
        check_header(f.magic, BFV_OUTPUT_MAGIC, f.version)?;
        if f.key_id != model.key_id {
            return Err(malformed(
                "a result encrypted under another owner key than the model's",
            ));
        }
        if f.moduli != model.moduli {
            return Err(malformed(format!(
                "a result for plaintext moduli {:?}, the model has {:?}",
                f.moduli, model.moduli
            )));
        }
        let want = model.output_ciphertexts();
        if f.cts.len() != model.params.len() || f.cts.iter().any(|c| c.len() != want) {
            return Err(malformed(format!(
                "a result of {:?} ciphertexts per instance, the model produces {} instances \
                 of {want}",
                f.cts.iter().map(Vec::len).collect::<Vec<_>>(),
                model.params.len()
            )));
        }
        let cts = f
            .cts
            .iter()
            .zip(&model.params)
            .map(|(cts, p)| {
                cts.iter()
                    .map(|b| {
                        let ct =
                            Ciphertext::from_bytes(be, p, b).map_err(|e| bfv_error("result", e))?;
                        if ct.degree() != 1 {
                            return Err(malformed(format!(
                                "a result ciphertext of degree {}",
                                ct.degree()
                            )));
                        }
                        Ok(ct)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { cts })
    }
}

impl BfvProtectPlan {
    /// The owner's half of the plan (the integer layers, which hold the model's weights in
    /// the clear; store it as privately as the secret key), to reload with
    /// [`BfvProtectPlan::from_owner_bytes`] beside the protected model.
    ///
    /// # Errors
    /// Encoding failures.
    pub fn to_owner_bytes(&self, key_id: [u8; 32]) -> Result<Vec<u8>, NnError> {
        encode(&OwnerFile {
            magic: BFV_OWNER_MAGIC,
            version: BFV_WIRE_VERSION,
            key_id,
            quant: self.quant.clone(),
            literal: self.ring.clone(),
            moduli: self.moduli.clone(),
            budgets: self.budgets.clone(),
            by_features: self.by_features.clone(),
            output_bound: self.output_bound,
        })
    }

    /// The plan of `model` from the owner's bytes.
    ///
    /// # Errors
    /// [`NnError::Format`] for a wrong magic or version, or a plan of another model
    /// (owner key, ring, moduli or layers that differ).
    pub fn from_owner_bytes<B: Backend>(
        bytes: &[u8],
        model: &BfvProtectedModel<B>,
    ) -> Result<Self, NnError> {
        let f: OwnerFile = decode(bytes, "owner plan")?;
        check_header(f.magic, BFV_OWNER_MAGIC, f.version)?;
        if f.key_id != model.key_id || f.literal != model.ring || f.moduli != model.moduli {
            return Err(malformed(
                "the owner's plan belongs to another protected model (owner key, ring or \
                 moduli differ)",
            ));
        }
        // Sizes first (nothing is allocated by a count the file states before it is
        // bounded), then what exactness rests on, re-derived: the worst-case output over
        // the model's own feature range, and moduli whose product exceeds twice it.
        let spec = &model.spec;
        f.quant
            .check_structure(
                spec.features()
                    .max(spec.layers.iter().map(|l| l.outputs).max().unwrap_or(0)),
                2 * MAX_PROTECTED_LAYERS,
                crate::bfv_batch::MAX_PLAN_TERMS,
            )
            .map_err(|e| malformed(format!("owner's plan: {e}")))?;
        let input = f.quant.input();
        if f.quant.input_len() != spec.features()
            || f.quant.output_len() != spec.outputs()
            || input != model.input
            || f.budgets.len() != spec.layers.len()
            || f.by_features.iter().any(|b| b.len() != spec.layers.len())
        {
            return Err(malformed(
                "the owner's plan has another shape or feature quantization than the model",
            ));
        }
        let bound = f.quant.bounds()?.output_magnitude();
        let crt = Crt::new(&f.moduli).map_err(malformed)?;
        if bound != f.output_bound || !crate::bfv_batch::holds(crt.product(), bound) {
            return Err(malformed(
                "the owner's plan's moduli do not hold its integer network's outputs",
            ));
        }
        let (layers, squares) = super::bfv::int_layers(&f.quant)?;
        let shapes_match = layers.len() == spec.layers.len()
            && f.quant.input_len() == spec.features()
            && layers
                .iter()
                .zip(&spec.layers)
                .all(|(l, s)| l.inputs == s.inputs && l.outputs == s.outputs)
            && squares
                .iter()
                .zip(&spec.layers)
                .all(|(&q, s)| q == s.square.is_some());
        if !shapes_match {
            return Err(malformed(
                "the owner's plan has other layers than the protected model",
            ));
        }
        Ok(Self {
            spec: spec.clone(),
            quant: f.quant,
            layers,
            squares,
            layout: model.layout.clone(),
            ring: f.literal,
            moduli: f.moduli,
            budgets: f.budgets,
            by_features: f.by_features,
            output_bound: f.output_bound,
        })
    }
}
