//! The data owner's side: the [`ClientSpec`] of a compiled model (what a client needs and
//! nothing of the weights), key generation, encryption of images into the plan's input
//! layout and decryption of its outputs; [`EncryptedImages`], the ciphertexts that travel
//! between client and server, bound to a model and a key pair.

use std::sync::Arc;

use hecnn_ckks::{Ciphertext, CkksParams, Decryptor, Evaluator, encrypt_pk};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{
    EncapsulationKeys, EvaluationKeys, KeyRequirements, KeyStorage, ParamsLiteral, PublicKey,
    SecretKey,
};
use serde::{Deserialize, Serialize};

use super::{CompiledModel, PackedPlan, PackingKind, envelope};
use crate::{NnError, Tensor, batch::OutputMap};

/// Where an image's values go in the input ciphertexts and where the logits come out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoLayout {
    /// One image per slot: input ciphertext `p` holds pixel `p` of every image, output
    /// ciphertext `o` logit `o`.
    Batch {
        /// Input ciphertexts (pixels of an image).
        inputs: usize,
        /// Output ciphertexts (logits).
        outputs: usize,
    },
    /// One image densely packed: value `i` of the image at flat position `input[i]`
    /// (ciphertext `p / slots`, slot `p % slots`), logit `o` at `output[o]`.
    Single {
        /// Slots per ciphertext.
        slots: usize,
        /// Flat positions of the image's values.
        input: Vec<usize>,
        /// Flat positions of the logits.
        output: Vec<usize>,
    },
}

/// Most images of single-image packing one set of [`EncryptedImages`] holds.
pub const MAX_SINGLE_IMAGES: usize = 256;

/// Most ciphertexts one image's input or output may span in single-image packing (a
/// bound a client spec read from elsewhere is checked against before anything is
/// allocated; the CIFAR-10 network's input takes one).
const MAX_IO_CTS: usize = 64;

/// Most rotation keys a client spec may ask for (the CIFAR-10 network's single-image plan
/// asks for about a hundred; each key is megabytes).
pub const MAX_ROTATIONS: usize = 1024;

use crate::single::layout::cts_of;

impl IoLayout {
    /// Ciphertexts one evaluation takes (batch: per batch of images; single: per image).
    pub fn input_cts(&self) -> usize {
        match self {
            Self::Batch { inputs, .. } => *inputs,
            Self::Single { slots, input, .. } => cts_of(input, *slots),
        }
    }

    /// Ciphertexts one evaluation produces.
    pub fn output_cts(&self) -> usize {
        match self {
            Self::Batch { outputs, .. } => *outputs,
            Self::Single { slots, output, .. } => cts_of(output, *slots),
        }
    }

    /// Ciphertexts `images` images take (`None` on overflow); batch packing takes one
    /// evaluation for up to a batch.
    fn cts_for(&self, images: usize, output: bool) -> Option<usize> {
        let per = if output {
            self.output_cts()
        } else {
            self.input_cts()
        };
        match self {
            Self::Batch { .. } => Some(per),
            Self::Single { .. } => images.checked_mul(per),
        }
    }

    fn check(&self, values: usize, max_slots: usize) -> Result<(), NnError> {
        let bad = |reason: String| NnError::Format {
            what: "client spec",
            reason,
        };
        match self {
            Self::Batch { inputs, outputs } => {
                if *inputs != values || *outputs == 0 || *outputs > max_slots {
                    return Err(bad(format!(
                        "batch layout of {inputs} inputs and {outputs} outputs for images of {values} values"
                    )));
                }
            }
            Self::Single {
                slots,
                input,
                output,
            } => {
                let limit = slots.saturating_mul(MAX_IO_CTS);
                if !slots.is_power_of_two()
                    || *slots > max_slots
                    || input.len() != values
                    || output.is_empty()
                    || input.iter().chain(output).any(|&p| p >= limit)
                {
                    return Err(bad(format!(
                        "single-image layout of {} inputs and {} outputs over {slots} slots does not fit images of {values} values and {max_slots} slots",
                        input.len(),
                        output.len()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What a client needs of a compiled model: the parameters, the input shape and layout,
/// the output layout and the exact evaluation keys the server needs. No weights.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    name: String,
    model: [u8; 32],
    params: Arc<CkksParams>,
    input_shape: [usize; 3],
    io: IoLayout,
    keys: KeyRequirements,
    input_level: usize,
    /// Hamming weight of bootstrapping's ephemeral secret, when the plan bootstraps.
    encapsulation: Option<usize>,
}

#[derive(Serialize, Deserialize)]
struct SpecBody {
    name: String,
    model: [u8; 32],
    literal: ParamsLiteral,
    log_scale: u32,
    input_shape: [usize; 3],
    io: IoLayout,
    relin: bool,
    rotations: Vec<i64>,
    conjugate: bool,
    input_level: usize,
    encapsulation: Option<usize>,
    /// `(step, level)`: rotations whose keys are restricted to `level` and below.
    rotation_levels: Vec<(i64, usize)>,
}

const SPEC: envelope::Kind = envelope::Kind {
    what: "client spec",
    magic: *b"HCNC",
    // 2: the input level and bootstrapping's encapsulation keys.
    // 3: rotation keys restricted to the levels they are used at.
    version: 3,
    remedy: "export the client spec of the compiled model again",
    limit: MAX_SPEC_BYTES,
};

/// Largest client spec read (bytes).
pub const MAX_SPEC_BYTES: u64 = 64 << 20;

impl ClientSpec {
    pub(super) fn of(c: &CompiledModel) -> Self {
        let io = match c.plan() {
            PackedPlan::Batch(p) => IoLayout::Batch {
                inputs: p.inputs(),
                outputs: p.outputs(),
            },
            PackedPlan::Single(p) => IoLayout::Single {
                slots: p.slots(),
                input: p.input_positions().to_vec(),
                output: p.output_positions().to_vec(),
            },
        };
        Self {
            name: c.name().to_string(),
            model: c.fingerprint(),
            params: Arc::clone(c.params()),
            input_shape: c.model().input_shape,
            io,
            keys: c.key_requirements(),
            input_level: c.input_level(),
            encapsulation: c.refresh().map(|r| r.config().ephemeral_weight),
        }
    }

    /// Level the inputs are encrypted at.
    pub fn input_level(&self) -> usize {
        self.input_level
    }

    /// Hamming weight of bootstrapping's ephemeral secret when the plan bootstraps: the
    /// client then also makes encapsulation keys ([`KeySet::encapsulation`]).
    pub fn encapsulation_weight(&self) -> Option<usize> {
        self.encapsulation
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fingerprint of the compiled model this spec belongs to.
    pub fn model_fingerprint(&self) -> [u8; 32] {
        self.model
    }

    /// The parameters keys and ciphertexts are made under.
    pub fn params(&self) -> &Arc<CkksParams> {
        &self.params
    }

    /// The shape `[C, H, W]` of an input image.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input_shape
    }

    /// The input and output layouts.
    pub fn io(&self) -> &IoLayout {
        &self.io
    }

    /// The packing.
    pub fn packing(&self) -> PackingKind {
        match self.io {
            IoLayout::Batch { .. } => PackingKind::Batch,
            IoLayout::Single { .. } => PackingKind::Single,
        }
    }

    /// Images one set of [`EncryptedImages`] holds at most: a batch's slots, or
    /// [`MAX_SINGLE_IMAGES`] images of single-image packing (each is a few ciphertexts of
    /// its own, megabytes each).
    pub fn max_images(&self) -> usize {
        match self.io {
            IoLayout::Batch { .. } => self.params.max_slots(),
            IoLayout::Single { .. } => MAX_SINGLE_IMAGES,
        }
    }

    /// The evaluation keys the server needs, exactly.
    pub fn key_requirements(&self) -> &KeyRequirements {
        &self.keys
    }

    /// Size of the seed-compressed evaluation keys, before they exist.
    pub fn evaluation_key_bytes(&self) -> usize {
        self.keys.key_bytes(self.params.rlwe())
    }

    /// Whether `bytes` look like a client spec (its magic number).
    pub fn is_spec(bytes: &[u8]) -> bool {
        envelope::is(SPEC, bytes)
    }

    /// Serializes the spec (format version, checksum).
    ///
    /// # Errors
    /// Serialization failures.
    pub fn to_bytes(&self) -> Result<Vec<u8>, NnError> {
        envelope::seal(
            SPEC,
            &SpecBody {
                name: self.name.clone(),
                model: self.model,
                literal: self.params.rlwe().literal().clone(),
                log_scale: self.params.log_scale(),
                input_shape: self.input_shape,
                io: self.io.clone(),
                relin: self.keys.relin,
                rotations: self.keys.rotations.iter().copied().collect(),
                conjugate: self.keys.conjugate,
                input_level: self.input_level,
                encapsulation: self.encapsulation,
                rotation_levels: self
                    .keys
                    .rotation_levels
                    .iter()
                    .map(|(&k, &l)| (k, l))
                    .collect(),
            },
        )
    }

    /// Reads a spec, checking the checksum, the parameters (security on the primes
    /// generated) and that the layouts fit the parameters and the input shape.
    ///
    /// # Errors
    /// [`NnError::Checksum`], [`NnError::Version`], [`NnError::Format`]; parameter errors.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NnError> {
        let b: SpecBody = envelope::open(SPEC, bytes)?;
        if b.rotations.len() > MAX_ROTATIONS || b.rotation_levels.len() > b.rotations.len() {
            // Every level names a rotation of the spec: more levels than rotations is as
            // malformed as too many rotations.
            return Err(NnError::Format {
                what: SPEC.what,
                reason: format!(
                    "{} rotation keys and {} rotation levels: at most {MAX_ROTATIONS} keys, a level per key",
                    b.rotations.len(),
                    b.rotation_levels.len()
                ),
            });
        }
        let params = Arc::new(super::params::from_record(&b.literal, b.log_scale)?);
        let values = b
            .input_shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| NnError::Format {
                what: SPEC.what,
                reason: format!("input shape {:?} overflows", b.input_shape),
            })?;
        b.io.check(values, params.max_slots())?;
        let slots = params.max_slots() as i64;
        if b.rotations.iter().any(|r| r.unsigned_abs() >= slots as u64) {
            return Err(NnError::Format {
                what: SPEC.what,
                reason: format!("a rotation beyond the {slots} slots"),
            });
        }
        if let Some((step, level)) = b
            .rotation_levels
            .iter()
            .find(|(k, l)| !b.rotations.contains(k) || *l > params.max_level())
        {
            return Err(NnError::Format {
                what: SPEC.what,
                reason: format!(
                    "rotation {step} at level {level}: not a rotation of the spec, or above \
                     level {}",
                    params.max_level()
                ),
            });
        }
        // A server choosing a low ephemeral weight could recover the secret key from the
        // encapsulation keys: only the weight hecnn's circuit is built for is accepted.
        if b.input_level > params.max_level()
            || b.encapsulation
                .is_some_and(|h| h != hecnn_ckks::bootstrap::BOOTSTRAP_EPHEMERAL_WEIGHT)
        {
            return Err(NnError::Format {
                what: SPEC.what,
                reason: format!(
                    "input level {} of {} levels, ephemeral weight {:?} of {} coefficients",
                    b.input_level,
                    params.max_level(),
                    b.encapsulation,
                    params.n()
                ),
            });
        }
        Ok(Self {
            name: b.name,
            model: b.model,
            input_level: b.input_level,
            encapsulation: b.encapsulation,
            params,
            input_shape: b.input_shape,
            io: b.io,
            keys: KeyRequirements {
                relin: b.relin,
                rotations: b.rotations.into_iter().collect(),
                conjugate: b.conjugate,
                rotation_levels: b.rotation_levels.into_iter().collect(),
            },
        })
    }

    /// Checks that `images` have the model's input shape.
    pub(crate) fn check_shapes(&self, images: &[Tensor]) -> Result<(), NnError> {
        if let Some(im) = images.iter().find(|im| im.shape() != self.input_shape) {
            return Err(NnError::Mismatch {
                what: "image shape",
                expected: format!("{:?}", self.input_shape),
                found: format!("{:?}", im.shape()),
            });
        }
        Ok(())
    }

    /// Checks that `images` fit the spec (shape, count per evaluation).
    fn check_images(&self, images: &[Tensor]) -> Result<(), NnError> {
        self.check_shapes(images)?;
        if images.len() > self.max_images() {
            return Err(NnError::Mismatch {
                what: "images encrypted together",
                expected: format!("at most {}", self.max_images()),
                found: images.len().to_string(),
            });
        }
        Ok(())
    }
}

/// A client's keys: the secret key stays with the client; the evaluation keys go to the
/// server.
pub struct KeySet<B: Backend> {
    /// The secret key.
    pub secret: SecretKey,
    /// The public key (encryption).
    pub public: PublicKey<B>,
    /// The evaluation keys the plan needs, exactly.
    pub evaluation: EvaluationKeys<B>,
    /// Bootstrapping's encapsulation keys (to and from a sparse ephemeral secret), when the
    /// plan bootstraps; they go to the server with the evaluation keys.
    pub encapsulation: Option<EncapsulationKeys<B>>,
}

/// The data owner: keys, encryption and decryption for one compiled model.
pub struct Client<B: Backend> {
    spec: ClientSpec,
    /// An evaluator without keys: encoding and decoding.
    eval: Evaluator<B>,
}

impl<B: Backend> Client<B> {
    /// A client of `spec` on `backend`.
    ///
    /// # Errors
    /// Backend setup.
    pub fn new(spec: ClientSpec, backend: B) -> Result<Self, NnError> {
        let keys = EvaluationKeys::empty(spec.params.rlwe());
        let eval = Evaluator::new(Arc::clone(&spec.params), Arc::new(keys), backend)?;
        Ok(Self { spec, eval })
    }

    /// The spec.
    pub fn spec(&self) -> &ClientSpec {
        &self.spec
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        self.eval.backend()
    }

    /// Generates a secret key, its public key and exactly the evaluation keys the plan
    /// needs.
    ///
    /// # Errors
    /// Key generation failures.
    pub fn keygen(&self, rng: &mut Prng) -> Result<KeySet<B>, NnError> {
        self.keygen_with(rng, KeyStorage::Expanded)
    }

    /// As [`Client::keygen`], the evaluation keys held as `storage` says from the moment
    /// each is made: for a server in the same process that holds them compact
    /// ([`crate::compile::ServerPlan::key_storage`]), so that they never exist expanded
    /// all at once.
    ///
    /// # Errors
    /// As [`Client::keygen`].
    pub fn keygen_with(&self, rng: &mut Prng, storage: KeyStorage) -> Result<KeySet<B>, NnError> {
        let be = self.eval.backend();
        let secret = SecretKey::generate(self.spec.params.rlwe(), rng)?;
        let public = secret.public_key(be, rng)?;
        let evaluation = secret.evaluation_keys_with(be, &self.spec.keys, storage, rng)?;
        let encapsulation = match self.spec.encapsulation {
            Some(weight) => Some(secret.encapsulation_keys(be, weight, rng)?),
            None => None,
        };
        Ok(KeySet {
            secret,
            public,
            evaluation,
            encapsulation,
        })
    }

    /// Encrypts `images` with the public key in the plan's input layout: one batch (batch
    /// packing, at most a batch of images) or each image's ciphertexts in turn.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] for images of another shape, more images than a batch holds,
    /// or a public key of other parameters; encryption errors.
    pub fn encrypt(
        &self,
        pk: &PublicKey<B>,
        images: &[Tensor],
        rng: &mut Prng,
    ) -> Result<EncryptedImages<B>, NnError> {
        self.spec.check_images(images)?;
        check_params(pk.params().fingerprint(), &self.spec.params)?;
        let be = self.eval.backend();
        let top = self.spec.input_level;
        let cts = match &self.spec.io {
            IoLayout::Batch { .. } => {
                crate::batch::encrypt_images(&self.eval, images, top, rng, |pt, r| {
                    encrypt_pk(pk, be, pt, r)
                })?
            }
            IoLayout::Single { slots, input, .. } => {
                let mut cts = Vec::with_capacity(images.len() * cts_of(input, *slots));
                for image in images {
                    cts.extend(encrypt_single(
                        &self.eval,
                        *slots,
                        input,
                        image,
                        top,
                        |pt| encrypt_pk(pk, be, pt, rng),
                    )?);
                }
                cts
            }
        };
        Ok(EncryptedImages {
            kind: ImagesKind::Inputs,
            model: self.spec.model,
            key_id: pk.key_id(),
            packing: self.spec.packing(),
            images: images.len(),
            map: OutputMap { a: 1.0, gamma: 0.0 },
            cts,
        })
    }

    /// Decrypts a server's outputs into every image's logits.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] for outputs of another model, packing or key pair; decryption
    /// errors.
    pub fn decrypt(
        &self,
        sk: &SecretKey,
        out: &EncryptedImages<B>,
    ) -> Result<Vec<Vec<f64>>, NnError> {
        out.check(
            ImagesKind::Outputs,
            self.spec.model,
            self.spec.packing(),
            &sk.key_id(),
        )?;
        let dec = Decryptor::new(sk, self.eval.backend())?;
        match &self.spec.io {
            IoLayout::Batch { .. } => {
                crate::batch::decrypt_outputs(&self.eval, &out.cts, out.map, out.images, |ct| {
                    dec.decrypt(ct)
                })
            }
            IoLayout::Single { slots, output, .. } => {
                let per = cts_of(output, *slots);
                if out.images.checked_mul(per) != Some(out.cts.len()) {
                    return Err(NnError::Mismatch {
                        what: "output ciphertexts",
                        expected: format!("{per} per image for {} images", out.images),
                        found: out.cts.len().to_string(),
                    });
                }
                out.cts
                    .chunks(per.max(1))
                    .map(|image| {
                        decrypt_single(&self.eval, *slots, output, image, out.map, |ct| {
                            dec.decrypt(ct)
                        })
                    })
                    .collect()
            }
        }
    }
}

/// Fails unless the key's parameters are the spec's.
fn check_params(key: [u8; 32], params: &CkksParams) -> Result<(), NnError> {
    let want = params.rlwe().fingerprint();
    if key != want {
        return Err(NnError::Mismatch {
            what: "key parameters",
            expected: short(&want),
            found: short(&key),
        });
    }
    Ok(())
}

/// Short hex form of an id, for messages.
pub(crate) fn short(id: &[u8; 32]) -> String {
    id[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// An image's values in a single-image layout: value `i` at flat position `positions[i]`.
pub(crate) fn scatter(
    slots: usize,
    positions: &[usize],
    image: &Tensor,
) -> Result<Vec<Vec<f64>>, NnError> {
    if image.len() != positions.len() {
        return Err(NnError::Mismatch {
            what: "image values",
            expected: positions.len().to_string(),
            found: image.len().to_string(),
        });
    }
    let mut values = vec![vec![0.0; slots]; cts_of(positions, slots)];
    for (&p, &v) in positions.iter().zip(image.data()) {
        if let Some(slot) = values.get_mut(p / slots).and_then(|c| c.get_mut(p % slots)) {
            *slot = v;
        }
    }
    Ok(values)
}

/// The logits at `positions` of decoded output ciphertexts, through the output map.
pub(crate) fn gather(
    slots: usize,
    positions: &[usize],
    decoded: &[Vec<f64>],
    map: OutputMap,
) -> Result<Vec<f64>, NnError> {
    positions
        .iter()
        .map(|&p| {
            decoded
                .get(p / slots.max(1))
                .and_then(|c| c.get(p % slots.max(1)))
                .map(|v| map.a * v + map.gamma)
                .ok_or_else(|| {
                    NnError::Internal(format!("output position {p} outside the ciphertexts"))
                })
        })
        .collect()
}

/// Encrypts one image into a single-image layout at `level`.
pub(crate) fn encrypt_single<B: Backend>(
    eval: &Evaluator<B>,
    slots: usize,
    positions: &[usize],
    image: &Tensor,
    level: usize,
    mut encrypt: impl FnMut(&hecnn_ckks::Plaintext<B>) -> Result<Ciphertext<B>, hecnn_ckks::CkksError>,
) -> Result<Vec<Ciphertext<B>>, NnError> {
    let values = scatter(slots, positions, image)?;
    let err = |source: hecnn_ckks::CkksError| NnError::Encrypted {
        node: "input".into(),
        source: source.into(),
    };
    values
        .iter()
        .map(|v| {
            let pt = eval
                .encode_real(v, level, eval.params().default_scale(), slots)
                .map_err(err)?;
            encrypt(&pt).map_err(err)
        })
        .collect()
}

/// Decrypts one image's output ciphertexts of a single-image layout into its logits.
pub(crate) fn decrypt_single<B: Backend>(
    eval: &Evaluator<B>,
    slots: usize,
    positions: &[usize],
    out: &[Ciphertext<B>],
    map: OutputMap,
    mut decrypt: impl FnMut(&Ciphertext<B>) -> Result<hecnn_ckks::Plaintext<B>, hecnn_ckks::CkksError>,
) -> Result<Vec<f64>, NnError> {
    let cts = cts_of(positions, slots);
    if out.len() != cts || out.iter().any(|ct| ct.slots() != slots) {
        return Err(NnError::Mismatch {
            what: "output ciphertexts",
            expected: format!("{cts} of {slots} slots"),
            found: format!(
                "{} of {:?} slots",
                out.len(),
                out.iter()
                    .map(Ciphertext::slots)
                    .collect::<std::collections::BTreeSet<_>>()
            ),
        });
    }
    let err = |source: hecnn_ckks::CkksError| NnError::Encrypted {
        node: "output".into(),
        source: source.into(),
    };
    let mut decoded = Vec::with_capacity(cts);
    for ct in out {
        let pt = decrypt(ct).map_err(err)?;
        let values = eval
            .encoder()
            .decode_real(eval.backend(), eval.params(), &pt)
            .map_err(err)?;
        if values.len() != slots {
            return Err(NnError::Mismatch {
                what: "decoded slots",
                expected: slots.to_string(),
                found: values.len().to_string(),
            });
        }
        decoded.push(values);
    }
    gather(slots, positions, &decoded, map)
}

/// What a set of encrypted images holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagesKind {
    /// Encrypted input images.
    Inputs,
    /// Encrypted outputs (logits, with the output map).
    Outputs,
}

/// Ciphertexts of a number of images, bound to the compiled model and the key pair:
/// the client's inputs or the server's outputs.
pub struct EncryptedImages<B: Backend> {
    kind: ImagesKind,
    model: [u8; 32],
    key_id: [u8; 32],
    packing: PackingKind,
    images: usize,
    map: OutputMap,
    cts: Vec<Ciphertext<B>>,
}

impl<B: Backend> std::fmt::Debug for EncryptedImages<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedImages")
            .field("kind", &self.kind)
            .field("model", &short(&self.model))
            .field("key_id", &short(&self.key_id))
            .field("packing", &self.packing)
            .field("images", &self.images)
            .field("ciphertexts", &self.cts.len())
            .finish_non_exhaustive()
    }
}

/// The stored form: the header, then the output map and the ciphertexts (postcard writes
/// the nested header's fields in sequence, so the header is a prefix of the body).
#[derive(Serialize, Deserialize)]
struct ImagesBody {
    head: ImagesHeader,
    map: (f64, f64),
    cts: Vec<Vec<u8>>,
}

const IMAGES: envelope::Kind = envelope::Kind {
    what: "encrypted images",
    magic: *b"HCNB",
    version: 2,
    remedy: "encrypt the images again",
    limit: MAX_IMAGES_BYTES,
};

/// Largest encrypted-images file read (bytes): a batch of CIFAR-10 images at N = 2^14 is
/// a few GB.
pub const MAX_IMAGES_BYTES: u64 = 64 << 30;

/// What serialized [`EncryptedImages`] say about themselves, read without decoding a
/// ciphertext ([`ImagesHeader::read`]): a server refuses inputs of another model, packing or
/// key pair before the work of decoding them, and names which of these differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesHeader {
    /// Inputs or outputs.
    pub kind: ImagesKind,
    /// The fingerprint of the compiled model they are for.
    pub model: [u8; 32],
    /// The key pair they are encrypted under.
    pub key_id: [u8; 32],
    /// The packing.
    pub packing: PackingKind,
    /// Number of images, as stated.
    pub images: u64,
}

impl ImagesHeader {
    /// Reads the header of serialized [`EncryptedImages`]; the envelope (magic, version,
    /// length, checksum of the whole file) is checked, the ciphertexts are not decoded.
    ///
    /// # Errors
    /// [`NnError::Checksum`], [`NnError::Version`], [`NnError::Format`].
    pub fn read(bytes: &[u8]) -> Result<Self, NnError> {
        envelope::open_prefix(IMAGES, bytes)
    }
}

impl<B: Backend> EncryptedImages<B> {
    pub(super) fn outputs(inputs: &Self, map: OutputMap, cts: Vec<Ciphertext<B>>) -> Self {
        Self {
            kind: ImagesKind::Outputs,
            model: inputs.model,
            key_id: inputs.key_id,
            packing: inputs.packing,
            images: inputs.images,
            map,
            cts,
        }
    }

    /// Inputs or outputs.
    pub fn kind(&self) -> ImagesKind {
        self.kind
    }

    /// Number of images.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The key pair the ciphertexts are encrypted under.
    pub fn key_id(&self) -> [u8; 32] {
        self.key_id
    }

    /// The fingerprint of the compiled model they belong to.
    pub fn model_fingerprint(&self) -> [u8; 32] {
        self.model
    }

    /// The packing.
    pub fn packing(&self) -> PackingKind {
        self.packing
    }

    /// The ciphertexts.
    pub fn ciphertexts(&self) -> &[Ciphertext<B>] {
        &self.cts
    }

    /// Moves the ciphertexts out (the bookkeeping stays for the outputs).
    pub(super) fn take_ciphertexts(&mut self) -> Vec<Ciphertext<B>> {
        std::mem::take(&mut self.cts)
    }

    /// Fails unless these are `kind` for `model` in `packing` under key pair `key_id`.
    pub(super) fn check(
        &self,
        kind: ImagesKind,
        model: [u8; 32],
        packing: PackingKind,
        key_id: &[u8; 32],
    ) -> Result<(), NnError> {
        let mismatch = |what, expected: String, found: String| {
            Err(NnError::Mismatch {
                what,
                expected,
                found,
            })
        };
        if self.kind != kind {
            return mismatch(
                "encrypted images",
                format!("{kind:?}"),
                format!("{:?}", self.kind),
            );
        }
        if self.model != model {
            return mismatch("compiled model", short(&model), short(&self.model));
        }
        if self.packing != packing {
            return mismatch("packing", packing.to_string(), self.packing.to_string());
        }
        if &self.key_id != key_id {
            return mismatch("key pair", short(key_id), short(&self.key_id));
        }
        Ok(())
    }

    /// Serializes the ciphertexts with their bookkeeping (format version, checksum).
    ///
    /// # Errors
    /// Serialization failures.
    pub fn to_bytes(&self, be: &B, params: &CkksParams) -> Result<Vec<u8>, NnError> {
        let cts = self
            .cts
            .iter()
            .map(|c| c.to_bytes(be, params))
            .collect::<Result<Vec<_>, _>>()?;
        envelope::seal(
            IMAGES,
            &ImagesBody {
                head: ImagesHeader {
                    kind: self.kind,
                    model: self.model,
                    key_id: self.key_id,
                    packing: self.packing,
                    images: self.images as u64,
                },
                map: (self.map.a, self.map.gamma),
                cts,
            },
        )
    }

    /// Reads encrypted images of `kind` for the model of `spec`: the checksum, the model,
    /// the packing and the ciphertext count are checked before any ciphertext is decoded,
    /// then every ciphertext against the parameters.
    ///
    /// # Errors
    /// [`NnError::Checksum`], [`NnError::Format`], [`NnError::Mismatch`] (another model,
    /// packing or count), ciphertext errors.
    pub fn from_bytes(
        be: &B,
        spec: &ClientSpec,
        kind: ImagesKind,
        bytes: &[u8],
    ) -> Result<Self, NnError> {
        let b: ImagesBody = envelope::open(IMAGES, bytes)?;
        let images = usize::try_from(b.head.images).unwrap_or(usize::MAX);
        let mut out = Self {
            kind: b.head.kind,
            model: b.head.model,
            key_id: b.head.key_id,
            packing: b.head.packing,
            images,
            map: OutputMap {
                a: b.map.0,
                gamma: b.map.1,
            },
            cts: Vec::new(),
        };
        out.check(kind, spec.model, spec.packing(), &b.head.key_id)?;
        if images == 0 || images > spec.max_images() {
            return Err(NnError::Mismatch {
                what: "images in one file",
                expected: format!("1 to {}", spec.max_images()),
                found: images.to_string(),
            });
        }
        let want = spec.io.cts_for(images, kind == ImagesKind::Outputs);
        if want != Some(b.cts.len()) {
            return Err(NnError::Mismatch {
                what: "ciphertexts",
                expected: want.map_or("fewer".into(), |w| w.to_string()),
                found: b.cts.len().to_string(),
            });
        }
        out.cts = b
            .cts
            .iter()
            .map(|c| Ciphertext::from_bytes(be, &spec.params, c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CompileOptions, PackingRequest, compile};
    use hecnn_rlwe::SecurityLevel;

    fn spec() -> ClientSpec {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/hcnn-mnist.onnx");
        let model = crate::onnx::import_onnx_file(&path).unwrap();
        let opts = CompileOptions {
            packing: PackingRequest::Single,
            log_n: 12,
            security: SecurityLevel::UncheckedForReproduction,
            ..CompileOptions::default()
        };
        compile(&model, &opts).unwrap().client_spec()
    }

    #[test]
    fn rotation_levels_that_name_no_rotation_or_no_level_are_refused() {
        let good = spec();
        let again = ClientSpec::from_bytes(&good.to_bytes().unwrap()).unwrap();
        assert_eq!(again.keys.rotation_levels, good.keys.rotation_levels);
        let top = good.params.max_level();
        let step = *good.keys.rotations.iter().next().unwrap();
        let absent = (1..).find(|k| !good.keys.rotations.contains(k)).unwrap();
        // As many levels as rotations, one of them for a rotation the spec lacks; then a
        // level above the top; then more levels than rotations.
        let mut swapped = good.clone();
        swapped.keys.rotation_levels.remove(&step);
        swapped.keys.rotation_levels.insert(absent, 0);
        let mut above = good.clone();
        above.keys.rotation_levels.insert(step, top + 1);
        let mut extra = good.clone();
        extra.keys.rotation_levels.insert(absent, 0);
        for (bad, says) in [
            (swapped, "not a rotation of the spec"),
            (above, "not a rotation of the spec"),
            (extra, "a level per key"),
        ] {
            let err = ClientSpec::from_bytes(&bad.to_bytes().unwrap()).unwrap_err();
            assert!(
                matches!(&err, NnError::Format { reason, .. } if reason.contains(says)),
                "{err}"
            );
        }
    }
}
