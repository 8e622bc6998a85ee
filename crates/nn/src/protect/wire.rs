//! Versioned byte formats of protected models and their results. Loading checks the magic,
//! the version, the parameters (rebuilt and security-checked from their literal), every
//! ciphertext's fingerprint, and that each ciphertext has the count, level, scale, slots and
//! degree the layout implies, so a malformed or mismatched file is an error, never a wrong
//! answer.

use std::sync::Arc;

use hecnn_ckks::{Ciphertext, CkksParams};
use hecnn_ring::Backend;
use hecnn_rlwe::ParamsLiteral;
use serde::{Deserialize, Serialize};

use super::{
    EncryptedLayer, LayerShape, MAX_PROTECTED_LAYERS, ProtectedModel, ProtectedOutput,
    ProtectedSpec, Scope, he, output_shape, schedule,
};
use crate::{NnError, onnx};

/// First bytes of a protected-model file.
pub const PROTECTED_MAGIC: [u8; 4] = *b"HCNP";
/// First bytes of an encrypted result.
pub const OUTPUT_MAGIC: [u8; 4] = *b"HCNO";
/// Version of both formats written (2: any number of protected layers). Version 1 files
/// (one or two dense layers) are still read.
pub const WIRE_VERSION: u16 = 2;

/// Relative tolerance on a stored ciphertext's scale (it must be the scale the layout
/// implies; any real difference is a different model or a tampered file).
const SCALE_TOLERANCE: f64 = 1e-9;

#[derive(Serialize, Deserialize)]
struct ModelFile {
    magic: [u8; 4],
    version: u16,
    prefix: Vec<u8>,
    scope: String,
    features: u64,
    layers: Vec<LayerFile>,
    literal: ParamsLiteral,
    log_scale: u32,
    key_id: [u8; 32],
}

/// One protected layer: its output count, the shift of the square after it, and its
/// ciphertexts (inputs follow from the layer before).
#[derive(Serialize, Deserialize)]
struct LayerFile {
    outputs: u64,
    square: Option<f64>,
    weights: Vec<Vec<u8>>,
    biases: Vec<Vec<u8>>,
}

/// The first fields of every file, read before the rest.
#[derive(Deserialize)]
struct Header {
    magic: [u8; 4],
    version: u16,
}

/// Version 1: one dense layer, or two with a square between them.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ModelFileV1 {
    magic: [u8; 4],
    version: u16,
    prefix: Vec<u8>,
    scope: String,
    features: u64,
    hidden: u64,
    second: Option<(f64, u64)>,
    literal: ParamsLiteral,
    log_scale: u32,
    key_id: [u8; 32],
    columns: Vec<Vec<u8>>,
    hidden_bias: Vec<u8>,
    rows: Vec<Vec<u8>>,
    out_bias: Vec<Vec<u8>>,
}

impl From<ModelFileV1> for ModelFile {
    /// Version 1's layouts are version 2's for the same layers: column groups at offset 0,
    /// then row groups read at each group's first slot (where version 1 put the bias).
    fn from(v1: ModelFileV1) -> Self {
        let mut layers = vec![LayerFile {
            outputs: v1.hidden,
            square: v1.second.map(|(shift, _)| shift),
            weights: v1.columns,
            biases: vec![v1.hidden_bias],
        }];
        if let Some((_, outputs)) = v1.second {
            layers.push(LayerFile {
                outputs,
                square: None,
                weights: v1.rows,
                biases: v1.out_bias,
            });
        }
        ModelFile {
            magic: v1.magic,
            version: v1.version,
            prefix: v1.prefix,
            scope: v1.scope,
            features: v1.features,
            layers,
            literal: v1.literal,
            log_scale: v1.log_scale,
            key_id: v1.key_id,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct OutputFile {
    magic: [u8; 4],
    version: u16,
    key_id: [u8; 32],
    cts: Vec<Vec<u8>>,
}

fn malformed(what: impl std::fmt::Display) -> NnError {
    NnError::Format {
        what: "protected model",
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
    if !(1..=WIRE_VERSION).contains(&version) {
        return Err(malformed(format!(
            "format version {version}, this build reads 1 to {WIRE_VERSION}"
        )));
    }
    Ok(())
}

/// Reads a protected-model file of any supported version.
fn read_model_file(bytes: &[u8]) -> Result<ModelFile, NnError> {
    let unreadable = |e: postcard::Error| malformed(format!("unreadable ({e})"));
    let (header, _) = postcard::take_from_bytes::<Header>(bytes).map_err(unreadable)?;
    check_header(header.magic, PROTECTED_MAGIC, header.version)?;
    if header.version == 1 {
        Ok(postcard::from_bytes::<ModelFileV1>(bytes)
            .map_err(unreadable)?
            .into())
    } else {
        postcard::from_bytes(bytes).map_err(unreadable)
    }
}

/// Loads a ciphertext and checks its level, scale, slots and degree.
fn load_ct<B: Backend>(
    be: &B,
    params: &CkksParams,
    bytes: &[u8],
    level: usize,
    scale: f64,
    what: &'static str,
) -> Result<Ciphertext<B>, NnError> {
    let ct = Ciphertext::from_bytes(be, params, bytes).map_err(he(what))?;
    let ok = ct.level() == level
        && ct.degree() == 1
        && ct.slots() == params.max_slots()
        && ((ct.scale() - scale) / scale).abs() < SCALE_TOLERANCE;
    if !ok {
        return Err(malformed(format!(
            "{what}: a ciphertext at level {}, degree {}, {} slots, scale 2^{:.3}; expected \
             level {level}, degree 1, {} slots, scale 2^{:.3}",
            ct.level(),
            ct.degree(),
            ct.slots(),
            ct.scale().log2(),
            params.max_slots(),
            scale.log2()
        )));
    }
    Ok(ct)
}

fn to_u64(v: usize) -> u64 {
    v as u64
}

/// The public spec a protected-model file declares (either scheme), checked: a known
/// scope, counts that fit, layers that chain, and a feature extractor that produces the
/// declared features. Errors are [`NnError::Format`] of `what`.
pub(super) fn read_spec(
    what: &'static str,
    prefix: &[u8],
    scope: &str,
    features: u64,
    layers: impl ExactSizeIterator<Item = (u64, Option<f64>)>,
) -> Result<ProtectedSpec, NnError> {
    let bad = |reason: String| NnError::Format { what, reason };
    let count =
        |v: u64, of: &str| usize::try_from(v).map_err(|_| bad(format!("{of} out of range")));
    let prefix = onnx::import_onnx(prefix)?;
    let scope = Scope::from_name(scope).ok_or_else(|| bad(format!("unknown scope '{scope}'")))?;
    let features = count(features, "feature count")?;
    let mut inputs = features;
    let mut shapes = Vec::with_capacity(layers.len());
    for (outputs, square) in layers {
        let outputs = count(outputs, "output count")?;
        shapes.push(LayerShape {
            inputs,
            outputs,
            square,
        });
        inputs = outputs;
    }
    let spec = ProtectedSpec {
        prefix,
        scope,
        layers: shapes,
    };
    spec.check().map_err(|e| bad(e.to_string()))?;
    let shapes = spec.prefix.shapes()?;
    let produced: usize = shapes[spec.prefix.output].iter().product();
    if produced != features {
        return Err(bad(format!(
            "the feature extractor produces {produced} values, the spec declares {features}"
        )));
    }
    Ok(spec)
}

impl<B: Backend> ProtectedModel<B> {
    /// Serializes the protected model (the cleartext feature extractor as ONNX, the public
    /// spec, the parameter literal and the seed-compressed ciphertexts).
    ///
    /// # Errors
    /// Export or backend transfer failures.
    pub fn to_bytes(&self, be: &B) -> Result<Vec<u8>, NnError> {
        let ct = |c: &Ciphertext<B>| c.to_bytes(be, &self.params).map_err(he("serialize"));
        let cts = |v: &[Ciphertext<B>]| v.iter().map(ct).collect::<Result<Vec<_>, _>>();
        let layers = self
            .spec
            .layers
            .iter()
            .zip(&self.layers)
            .map(|(shape, layer)| {
                Ok(LayerFile {
                    outputs: to_u64(shape.outputs),
                    square: shape.square,
                    weights: cts(&layer.weights)?,
                    biases: cts(&layer.biases)?,
                })
            })
            .collect::<Result<Vec<_>, NnError>>()?;
        let file = ModelFile {
            magic: PROTECTED_MAGIC,
            version: WIRE_VERSION,
            prefix: onnx::export_onnx(&self.spec.prefix)?,
            scope: self.spec.scope.name().into(),
            features: to_u64(self.spec.features()),
            layers,
            literal: self.params.rlwe().literal().clone(),
            log_scale: self.params.log_scale(),
            key_id: self.key_id,
        };
        postcard::to_allocvec(&file).map_err(|e| malformed(format!("encoding failed: {e}")))
    }

    /// Loads and validates a protected model.
    ///
    /// # Errors
    /// [`NnError::Format`] naming what is wrong: magic, version, parameters below their
    /// security level, a feature extractor that does not produce the declared features,
    /// layers that do not chain, ciphertext counts, levels, scales or fingerprints that do
    /// not match.
    pub fn from_bytes(be: &B, bytes: &[u8]) -> Result<Self, NnError> {
        let f = read_model_file(bytes)?;
        if f.layers.is_empty() || f.layers.len() > MAX_PROTECTED_LAYERS {
            return Err(malformed(format!(
                "{} protected layers (1 to {MAX_PROTECTED_LAYERS})",
                f.layers.len()
            )));
        }
        let params =
            Arc::new(CkksParams::from_literal(&f.literal, f.log_scale).map_err(he("parameters"))?);
        let spec = read_spec(
            "protected model",
            &f.prefix,
            &f.scope,
            f.features,
            f.layers.iter().map(|l| (l.outputs, l.square)),
        )?;
        if params.max_level() < spec.depth() {
            return Err(malformed(format!(
                "{} levels for a protected part of depth {}",
                params.max_level(),
                spec.depth()
            )));
        }
        let layout = spec.layout(params.max_slots())?;
        let (steps, _, _) = schedule(&params, &spec);
        let mut encrypted = Vec::with_capacity(f.layers.len());
        for (at, ((l, want), step)) in f.layers.iter().zip(&layout.layers).zip(&steps).enumerate() {
            if l.weights.len() != want.weights || l.biases.len() != want.biases {
                return Err(malformed(format!(
                    "layer {at}: {} weight and {} bias ciphertexts, the layout needs {} and {}",
                    l.weights.len(),
                    l.biases.len(),
                    want.weights,
                    want.biases
                )));
            }
            let load = |bytes: &[Vec<u8>], level, scale, what| {
                bytes
                    .iter()
                    .map(|b| load_ct(be, &params, b, level, scale, what))
                    .collect::<Result<Vec<_>, _>>()
            };
            encrypted.push(EncryptedLayer {
                weights: load(&l.weights, step.level, params.q_at(step.level), "weights")?,
                biases: load(&l.biases, step.level - 1, step.out_scale, "biases")?,
            });
        }
        Ok(Self {
            spec,
            params,
            layout,
            key_id: f.key_id,
            layers: encrypted,
        })
    }
}

impl<B: Backend> ProtectedOutput<B> {
    /// Serializes the result, tagged with the owner key it is encrypted under.
    ///
    /// # Errors
    /// Backend transfer failures.
    pub fn to_bytes(
        &self,
        be: &B,
        params: &CkksParams,
        key_id: [u8; 32],
    ) -> Result<Vec<u8>, NnError> {
        let cts = self
            .cts
            .iter()
            .map(|c| c.to_bytes(be, params).map_err(he("serialize")))
            .collect::<Result<Vec<_>, _>>()?;
        let file = OutputFile {
            magic: OUTPUT_MAGIC,
            version: WIRE_VERSION,
            key_id,
            cts,
        };
        postcard::to_allocvec(&file).map_err(|e| malformed(format!("encoding failed: {e}")))
    }

    /// Loads a result for `spec` under `params`, returning it with the key id it claims.
    ///
    /// # Errors
    /// [`NnError::Format`] for a wrong magic, version, ciphertext count, level or
    /// fingerprint.
    pub fn from_bytes(
        be: &B,
        spec: &ProtectedSpec,
        params: &CkksParams,
        bytes: &[u8],
    ) -> Result<(Self, [u8; 32]), NnError> {
        let f: OutputFile = postcard::from_bytes(bytes)
            .map_err(|e| malformed(format!("unreadable result ({e})")))?;
        check_header(f.magic, OUTPUT_MAGIC, f.version)?;
        let layout = spec.layout(params.max_slots())?;
        let (count, level, scale) = output_shape(params, spec, &layout);
        if f.cts.len() != count {
            return Err(malformed(format!(
                "a result of {} ciphertexts, the model produces {count}",
                f.cts.len()
            )));
        }
        let cts = f
            .cts
            .iter()
            .map(|b| load_ct(be, params, b, level, scale, "result"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Self { cts }, f.key_id))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::ir::{Dense, Node};
    use crate::protect::{FeatureInput, ProtectPlan, decrypt_output};
    use crate::{Model, Op, Tensor, exec};
    use hecnn_ckks::{Decryptor, Evaluator};
    use hecnn_ring::{CpuBackend, Prng};
    use hecnn_rlwe::SecretKey;

    /// Flatten(1×2×2) → Dense 3 → x²+2x → Dense 2.
    fn tiny() -> Model {
        let dense = |o: usize, i: usize, s: f64| {
            Op::Dense(Dense {
                weight: Tensor::new(
                    vec![o, i],
                    (0..o * i).map(|k| s * (k as f64 - 2.0)).collect(),
                )
                .unwrap(),
                bias: vec![0.25; o],
            })
        };
        let node = |name: &str, op, inputs| Node {
            name: name.into(),
            op,
            inputs,
        };
        Model {
            name: "tiny".into(),
            input_shape: [1, 2, 2],
            nodes: vec![
                node("x", Op::Input, vec![]),
                node("flat", Op::Flatten, vec![0]),
                node("fc1", dense(3, 4, 0.1), vec![1]),
                node("act", Op::Poly(vec![0.0, 2.0, 1.0]), vec![2]),
                node("fc2", dense(2, 3, 0.2), vec![3]),
            ],
            output: 4,
        }
    }

    #[test]
    fn version_1_files_still_load() {
        let model = tiny();
        let plan = ProtectPlan::new(&model, Scope::Classifier).unwrap();
        let params =
            Arc::new(CkksParams::from_literal(&hecnn_testkit::toy_literal(10, 3), 40).unwrap());
        let be = CpuBackend::new(1).unwrap();
        let mut rng = Prng::from_seed([5; 32]);
        let sk = SecretKey::generate(params.rlwe(), &mut rng).unwrap();
        let protected = plan.protect(&params, &sk, &be, &mut rng).unwrap();
        // The same ciphertexts in version 1's fields.
        let v2: ModelFile = postcard::from_bytes(&protected.to_bytes(&be).unwrap()).unwrap();
        let mut layers = v2.layers.into_iter();
        let (first, second) = (layers.next().unwrap(), layers.next().unwrap());
        let v1 = ModelFileV1 {
            magic: PROTECTED_MAGIC,
            version: 1,
            prefix: v2.prefix,
            scope: v2.scope,
            features: v2.features,
            hidden: first.outputs,
            second: Some((first.square.unwrap(), second.outputs)),
            literal: v2.literal,
            log_scale: v2.log_scale,
            key_id: v2.key_id,
            columns: first.weights,
            hidden_bias: first.biases.into_iter().next().unwrap(),
            rows: second.weights,
            out_bias: second.biases,
        };
        let loaded = ProtectedModel::from_bytes(&be, &postcard::to_allocvec(&v1).unwrap()).unwrap();
        assert_eq!(loaded.spec().layers, protected.spec().layers);

        let keys = sk
            .evaluation_keys(&be, &loaded.key_requirements(), &mut rng)
            .unwrap();
        let eval = Evaluator::new(Arc::clone(&params), Arc::new(keys), be.clone()).unwrap();
        let image = Tensor::new(vec![1, 2, 2], vec![0.5, -1.0, 0.25, 2.0]).unwrap();
        let features = loaded.spec().features_of(&image).unwrap();
        let out = loaded
            .evaluate(&eval, &FeatureInput::Plain(features))
            .unwrap();
        let dec = Decryptor::new(&sk, &be).unwrap();
        let logits = decrypt_output(loaded.spec(), &params, &dec, &be, &out).unwrap();
        let want = exec::run(&model, &image).unwrap();
        for (a, b) in logits.iter().zip(want.data()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // A version from the future is refused by number.
        let mut v3 = postcard::to_allocvec(&v1).unwrap();
        v3[4] = 3;
        let err = ProtectedModel::<CpuBackend>::from_bytes(&be, &v3)
            .err()
            .unwrap();
        assert!(err.to_string().contains("format version 3"), "{err}");
    }
}
