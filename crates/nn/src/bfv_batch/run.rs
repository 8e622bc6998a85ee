//! The client (keys, encryption, decryption with CRT recombination) and the server
//! (evaluation with the evaluation keys only) of a [`BfvPlan`].

use std::sync::Arc;

use hecnn_bfv::{BatchEncoder, BfvParams, Ciphertext, Decryptor, Evaluator, encrypt_sk};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{EvaluationKeys, KeyRequirements, Params, SecretKey};

use super::{BfvPlan, Crt, bfv_error};
use crate::{NnError, quant::QuantLayer};

/// A measured budget below this many bits counts as exhausted. Noise past the budget wraps
/// (the invariant noise is only known modulo 1), so an exhausted ciphertext measures a
/// budget of about `1.4/N` bits rather than zero; a genuine budget this small is a coin toss
/// away from a wrong decryption anyway.
pub const EXHAUSTED_BELOW_BITS: f64 = 0.1;

/// Output rows are summed this many at a time, so a wide layer's degree-2 sums never all
/// exist at once.
const CHUNK_ROWS: usize = 512;

/// One BFV instance per plaintext modulus, all on the same ring.
fn instances(plan: &BfvPlan, rlwe: &Arc<Params>) -> Result<Vec<Arc<BfvParams>>, NnError> {
    plan.moduli()
        .iter()
        .map(|&t| {
            BfvParams::new(Arc::clone(rlwe), t)
                .map(Arc::new)
                .map_err(|e| bfv_error("parameters", e))
        })
        .collect()
}

/// A layer finished (progress, and where a diagnostic may inspect the values).
#[derive(Clone, Copy, Debug)]
pub struct LayerDone<'a> {
    /// The BFV instance (plaintext modulus index).
    pub instance: usize,
    /// The layer's index.
    pub layer: usize,
    /// The layer's source node.
    pub node: &'a str,
    /// Seconds the layer took.
    pub seconds: f64,
}

/// What [`BfvServer::evaluate`] calls after every layer: its progress and its values; an
/// error stops the evaluation.
pub type OnLayer<'a, B> = dyn FnMut(LayerDone<'_>, &[Ciphertext<B>]) -> Result<(), NnError> + 'a;

/// The server side: evaluates a plan with evaluation keys only.
pub struct BfvServer<B: Backend> {
    plan: Arc<BfvPlan>,
    evals: Vec<Evaluator<B>>,
}

impl<B: Backend + Clone> BfvServer<B> {
    /// A server for `plan` with the client's evaluation keys (a relinearization key).
    ///
    /// # Errors
    /// Keys made for other parameters; parameter errors.
    pub fn new(plan: Arc<BfvPlan>, keys: Arc<EvaluationKeys<B>>, be: B) -> Result<Self, NnError> {
        let rlwe = Arc::clone(keys.params());
        if rlwe.fingerprint() != plan.rlwe()?.fingerprint() {
            return Err(NnError::Mismatch {
                what: "evaluation keys",
                expected: "keys for the plan's ring".into(),
                found: "keys made for other parameters".into(),
            });
        }
        let evals = instances(&plan, &rlwe)?
            .into_iter()
            .map(|p| Evaluator::new(p, Arc::clone(&keys), be.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| bfv_error("evaluation keys", e))?;
        Ok(Self { plan, evals })
    }

    /// The plan.
    pub fn plan(&self) -> &BfvPlan {
        &self.plan
    }

    /// The BFV parameters of every instance (for [`super::batch_from_bytes`]).
    pub fn params(&self) -> Vec<Arc<BfvParams>> {
        self.evals.iter().map(|e| Arc::clone(e.params())).collect()
    }

    /// Evaluates the network on encrypted inputs (`inputs[i][p]`: instance `i`, pixel `p`),
    /// one instance after the other; returns the output ciphertexts per instance.
    /// `on_layer` runs after every layer with the layer's values (it may stop the
    /// evaluation by returning an error).
    ///
    /// # Errors
    /// The wrong number of instances or input ciphertexts; evaluation errors naming the
    /// layer; `on_layer`'s errors.
    pub fn evaluate(
        &self,
        inputs: Vec<Vec<Ciphertext<B>>>,
        on_layer: &mut OnLayer<'_, B>,
    ) -> Result<Vec<Vec<Ciphertext<B>>>, NnError> {
        if inputs.len() != self.evals.len() {
            return Err(NnError::Mismatch {
                what: "encrypted input instances",
                expected: self.evals.len().to_string(),
                found: inputs.len().to_string(),
            });
        }
        let want = self.plan.quant().input_len();
        let mut outputs = Vec::with_capacity(inputs.len());
        for (i, (eval, mut values)) in self.evals.iter().zip(inputs).enumerate() {
            if values.len() != want {
                return Err(NnError::Mismatch {
                    what: "encrypted input ciphertexts",
                    expected: want.to_string(),
                    found: values.len().to_string(),
                });
            }
            for (l, layer) in self.plan.quant().layers().iter().enumerate() {
                let start = std::time::Instant::now();
                let node = layer.node();
                let err = |e| bfv_error(node, e);
                values = match layer {
                    QuantLayer::Square { .. } => {
                        let lazy = self.plan.lazy(l);
                        eval.backend()
                            .par_map(values, |ct| {
                                let sq = eval.mul(&ct, &ct)?;
                                if lazy { Ok(sq) } else { eval.relinearize(&sq) }
                            })
                            .into_iter()
                            .collect::<Result<_, _>>()
                            .map_err(err)?
                    }
                    QuantLayer::Linear { rows, .. } => {
                        let refs: Vec<&Ciphertext<B>> = values.iter().collect();
                        let mut out = Vec::with_capacity(rows.len());
                        for chunk in rows.chunks(CHUNK_ROWS) {
                            let terms: Vec<Vec<(usize, i64)>> = chunk
                                .iter()
                                .map(|r| r.terms.iter().map(|&(j, w)| (j as usize, w)).collect())
                                .collect();
                            let biases: Vec<i128> = chunk.iter().map(|r| r.bias).collect();
                            let sums = eval.weighted_sums(&refs, &terms, &biases).map_err(err)?;
                            if sums.first().is_some_and(|c| c.degree() == 2) {
                                out.extend(
                                    eval.backend()
                                        .par_map(sums, |ct| eval.relinearize(&ct))
                                        .into_iter()
                                        .collect::<Result<Vec<_>, _>>()
                                        .map_err(err)?,
                                );
                            } else {
                                out.extend(sums);
                            }
                        }
                        out
                    }
                };
                on_layer(
                    LayerDone {
                        instance: i,
                        layer: l,
                        node,
                        seconds: start.elapsed().as_secs_f64(),
                    },
                    &values,
                )?;
            }
            outputs.push(values);
        }
        Ok(outputs)
    }
}

/// Decrypted outputs and what the decryption measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Decrypted {
    /// `values[image][output]`: the network's integer outputs, exact.
    pub values: Vec<Vec<i128>>,
    /// The smallest noise budget (bits) left in any output ciphertext, per instance.
    pub budgets: Vec<f64>,
}

/// The client side: the secret key, encryption and decryption.
pub struct BfvClient<B: Backend> {
    plan: Arc<BfvPlan>,
    params: Vec<Arc<BfvParams>>,
    encoders: Vec<BatchEncoder>,
    crt: Crt,
    sk: SecretKey,
    be: B,
}

impl<B: Backend> BfvClient<B> {
    /// A client with a fresh secret key.
    ///
    /// # Errors
    /// Parameter errors (an altered plan).
    pub fn new(plan: Arc<BfvPlan>, be: B, rng: &mut Prng) -> Result<Self, NnError> {
        let rlwe = plan.rlwe()?;
        let sk =
            SecretKey::generate(&rlwe, rng).map_err(|e| bfv_error("key generation", e.into()))?;
        Self::with_key(plan, rlwe, sk, be)
    }

    /// A client with an existing secret key (as [`SecretKey::from_secret_bytes`] reads it
    /// for [`BfvPlan::rlwe`]).
    ///
    /// # Errors
    /// [`NnError::Mismatch`] for a key of other parameters; parameter errors.
    pub fn from_secret_key(plan: Arc<BfvPlan>, sk: SecretKey, be: B) -> Result<Self, NnError> {
        let rlwe = plan.rlwe()?;
        if sk.params().fingerprint() != rlwe.fingerprint() {
            return Err(NnError::Mismatch {
                what: "secret key",
                expected: "a key for the plan's ring".into(),
                found: "a key made for other parameters".into(),
            });
        }
        Self::with_key(plan, rlwe, sk, be)
    }

    fn with_key(
        plan: Arc<BfvPlan>,
        rlwe: Arc<Params>,
        sk: SecretKey,
        be: B,
    ) -> Result<Self, NnError> {
        let params = instances(&plan, &rlwe)?;
        let encoders = params
            .iter()
            .map(|p| BatchEncoder::new(p))
            .collect::<Result<_, _>>()
            .map_err(|e| bfv_error("parameters", e))?;
        let crt = Crt::new(plan.moduli())?;
        Ok(Self {
            plan,
            params,
            encoders,
            crt,
            sk,
            be,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &BfvPlan {
        &self.plan
    }

    /// The secret key (to store it: [`SecretKey::to_secret_bytes`]).
    pub fn secret_key(&self) -> &SecretKey {
        &self.sk
    }

    /// The BFV parameters of every instance (for [`super::batch_to_bytes`]).
    pub fn params(&self) -> &[Arc<BfvParams>] {
        &self.params
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.be
    }

    /// The evaluation keys the server needs (a relinearization key; no rotations).
    ///
    /// # Errors
    /// Key generation failures.
    pub fn evaluation_keys(&self, rng: &mut Prng) -> Result<EvaluationKeys<B>, NnError> {
        self.sk
            .evaluation_keys(&self.be, &KeyRequirements::relin(), rng)
            .map_err(|e| bfv_error("key generation", e.into()))
    }

    /// Encrypts a batch of quantized images (at most [`BfvPlan::slots`]): for every
    /// instance, ciphertext `p` holds pixel `p` of every image, one image per slot.
    /// Secret-key encryption (seed-compressed on the wire); pixels in parallel, each with
    /// its own generator seeded from `rng`.
    ///
    /// # Errors
    /// More images than slots; images of the wrong length; encryption errors.
    pub fn encrypt(
        &self,
        images: &[Vec<i64>],
        rng: &mut Prng,
    ) -> Result<Vec<Vec<Ciphertext<B>>>, NnError> {
        let slots = self.plan.slots();
        if images.len() > slots {
            return Err(NnError::Mismatch {
                what: "images in one batch",
                expected: format!("at most {slots}"),
                found: images.len().to_string(),
            });
        }
        let len = self.plan.quant().input_len();
        if let Some(bad) = images.iter().find(|x| x.len() != len) {
            return Err(NnError::Shape(format!(
                "a quantized image of {} values for a model of {len}",
                bad.len()
            )));
        }
        // The worst-case bound, and so exactness, holds only for inputs in the quantized
        // range (`QuantModel::quantize_input` clamps to it).
        let q = self.plan.quant().input();
        if let Some((i, v)) = images.iter().enumerate().find_map(|(i, x)| {
            x.iter()
                .find(|v| !(q.lo..=q.hi).contains(v))
                .map(|v| (i, *v))
        }) {
            return Err(NnError::OutOfRange {
                node: format!("input image {i}"),
                value: v as f64,
                bound: q.hi.max(-q.lo) as f64,
                what: "quantized input range (quantize with QuantModel::quantize_input)",
            });
        }
        let mut out = Vec::with_capacity(self.params.len());
        for (params, enc) in self.params.iter().zip(&self.encoders) {
            let tasks: Vec<(usize, [u8; 32])> = (0..len).map(|p| (p, rng.seed())).collect();
            let cts = self
                .be
                .par_map(tasks, |(p, seed)| {
                    let t = params.t() as i128;
                    let column: Vec<u64> = images
                        .iter()
                        .map(|x| (x[p] as i128).rem_euclid(t) as u64)
                        .collect();
                    let pt = enc.encode(&column)?;
                    encrypt_sk(params, &self.sk, &self.be, &pt, &mut Prng::from_seed(seed))
                })
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(|e| bfv_error("input", e))?;
            out.push(cts);
        }
        Ok(out)
    }

    /// The noise budget (bits) of a ciphertext of instance `instance`, measured with the
    /// secret key.
    ///
    /// # Errors
    /// An instance out of range; ciphertexts of other parameters.
    pub fn budget(&self, instance: usize, ct: &Ciphertext<B>) -> Result<f64, NnError> {
        let params = self.params.get(instance).ok_or_else(|| {
            NnError::Internal(format!("instance {instance} of {}", self.params.len()))
        })?;
        Decryptor::new(params, &self.sk, &self.be)
            .and_then(|d| d.noise_budget_bits(ct))
            .map_err(|e| bfv_error("output", e))
    }

    /// Decrypts the output ciphertexts of every instance for the first `count` images and
    /// recombines the residues. Refuses an output whose noise budget is exhausted (below
    /// [`EXHAUSTED_BELOW_BITS`]): its residues would be wrong, and so would the integer.
    ///
    /// # Errors
    /// [`NnError::OutOfRange`] naming an output with no budget left; the wrong number of
    /// instances or outputs; decryption errors.
    pub fn decrypt(
        &self,
        outputs: &[Vec<Ciphertext<B>>],
        count: usize,
    ) -> Result<Decrypted, NnError> {
        let n_out = self.plan.quant().output_len();
        if outputs.len() != self.params.len() || outputs.iter().any(|o| o.len() != n_out) {
            let lens: Vec<String> = outputs.iter().map(|o| o.len().to_string()).collect();
            return Err(NnError::Mismatch {
                what: "encrypted outputs",
                expected: format!("{} instances of {n_out} ciphertexts", self.params.len()),
                found: format!("instances of [{}] ciphertexts", lens.join(", ")),
            });
        }
        let count = count.min(self.plan.slots());
        // residues[instance][output][image]
        let mut residues = Vec::with_capacity(outputs.len());
        let mut budgets = Vec::with_capacity(outputs.len());
        for (i, ((params, enc), cts)) in self
            .params
            .iter()
            .zip(&self.encoders)
            .zip(outputs)
            .enumerate()
        {
            let dec =
                Decryptor::new(params, &self.sk, &self.be).map_err(|e| bfv_error("output", e))?;
            let per: Vec<(Vec<u64>, f64)> = self
                .be
                .par_map(cts.iter().collect(), |ct| {
                    let budget = dec.noise_budget_bits(ct)?;
                    let mut slots = enc.decode(&dec.decrypt(ct)?)?;
                    slots.truncate(count);
                    Ok::<_, hecnn_bfv::BfvError>((slots, budget))
                })
                .into_iter()
                .collect::<Result<_, _>>()
                .map_err(|e| bfv_error("output", e))?;
            let worst = per.iter().map(|(_, b)| *b).fold(f64::INFINITY, f64::min);
            if let Some((k, (_, b))) = per
                .iter()
                .enumerate()
                .find(|(_, (_, b))| *b < EXHAUSTED_BELOW_BITS)
            {
                return Err(NnError::OutOfRange {
                    node: format!("output {k} (plaintext modulus {})", self.plan.moduli()[i]),
                    value: *b,
                    bound: EXHAUSTED_BELOW_BITS,
                    what: "noise budget (bits, measured): exhausted, the decryption would be wrong",
                });
            }
            budgets.push(worst);
            residues.push(per.into_iter().map(|(s, _)| s).collect::<Vec<_>>());
        }
        let mut values = vec![vec![0i128; n_out]; count];
        for (img, row) in values.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                let r: Vec<u64> = residues.iter().map(|inst| inst[k][img]).collect();
                *v = self.crt.combine(&r)?;
            }
        }
        Ok(Decrypted { values, budgets })
    }
}
