//! The inference server's side: a [`ServerPlan`] and the evaluation keys of one client make
//! a [`Server`], which evaluates that client's [`EncryptedImages`]. No secret key is ever
//! involved.

use std::sync::Arc;

use hecnn_ckks::{CkksParams, Evaluator, LinearTransform, Plaintext};
use hecnn_ring::Backend;
use hecnn_rlwe::{EvaluationKeys, KeyRequirements};

use super::client::{ClientSpec, EncryptedImages, ImagesKind, short};
use super::{CompiledModel, PackedPlan, PackingKind};
use crate::{NnError, single::EncodedSingle};

/// What an inference server runs: the plan, its parameters and the keys it needs.
#[derive(Clone, Debug)]
pub struct ServerPlan {
    fingerprint: [u8; 32],
    params: Arc<CkksParams>,
    plan: Arc<PackedPlan>,
    spec: ClientSpec,
}

impl ServerPlan {
    pub(super) fn of(c: &CompiledModel) -> Self {
        Self {
            fingerprint: c.fingerprint(),
            params: Arc::clone(c.params()),
            plan: Arc::clone(&c.plan),
            spec: c.client_spec(),
        }
    }

    /// The fingerprint of the compiled model.
    pub fn model_fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The parameters.
    pub fn params(&self) -> &Arc<CkksParams> {
        &self.params
    }

    /// The plan.
    pub fn plan(&self) -> &PackedPlan {
        &self.plan
    }

    /// The packing.
    pub fn packing(&self) -> PackingKind {
        self.plan.kind()
    }

    /// The client spec that goes with the plan (what the server hands its clients).
    pub fn client_spec(&self) -> &ClientSpec {
        &self.spec
    }

    /// The evaluation keys a client must register.
    pub fn key_requirements(&self) -> &KeyRequirements {
        self.spec.key_requirements()
    }

    /// Fails unless `keys` are of this plan's parameters and hold every key it needs.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] naming the parameters or the first missing key.
    pub fn check_keys<B: Backend>(&self, keys: &EvaluationKeys<B>) -> Result<(), NnError> {
        let want = self.params.rlwe().fingerprint();
        let have = keys.params().fingerprint();
        if want != have {
            return Err(NnError::Mismatch {
                what: "evaluation keys' parameters",
                expected: short(&want),
                found: short(&have),
            });
        }
        let req = self.key_requirements();
        if req.relin && keys.relin().is_err() {
            return Err(NnError::Mismatch {
                what: "evaluation keys",
                expected: "a relinearization key".into(),
                found: "none".into(),
            });
        }
        let needed = req.galois_elements(self.params.rlwe());
        if let Some(g) = needed.iter().find(|&&g| !keys.has_galois(g)) {
            return Err(NnError::Mismatch {
                what: "evaluation keys",
                expected: format!("{} rotation keys", needed.len()),
                found: format!("none for Galois element {g}"),
            });
        }
        Ok(())
    }
}

/// A server for one client's key pair: the evaluator over its evaluation keys and, for
/// single-image packing, the plan's transforms encoded once for every image.
pub struct Server<B: Backend> {
    plan: ServerPlan,
    eval: Evaluator<B>,
    key_id: [u8; 32],
    encoded: Option<EncodedSingle<LinearTransform<B>, Plaintext<B>>>,
}

impl<B: Backend> Server<B> {
    /// Builds the server: checks the keys against the plan and lowers it (single-image
    /// packing encodes its diagonals at the top level).
    ///
    /// # Errors
    /// Keys of other parameters or missing a key the plan needs; encoding errors.
    pub fn new(plan: ServerPlan, keys: EvaluationKeys<B>, backend: B) -> Result<Self, NnError> {
        plan.check_keys(&keys)?;
        let key_id = keys.key_id();
        let eval = Evaluator::new(Arc::clone(&plan.params), Arc::new(keys), backend)?;
        let encoded = match &*plan.plan {
            PackedPlan::Batch(_) => None,
            PackedPlan::Single(p) => {
                Some(p.encode(&eval, plan.params.max_level(), plan.params.default_scale())?)
            }
        };
        Ok(Self {
            plan,
            eval,
            key_id,
            encoded,
        })
    }

    /// The key pair this server evaluates for.
    pub fn key_id(&self) -> [u8; 32] {
        self.key_id
    }

    /// The plan.
    pub fn plan(&self) -> &ServerPlan {
        &self.plan
    }

    /// Evaluates the plan on a client's encrypted images. `progress(done, total)` counts
    /// nodes (batch packing) or images (single-image packing), never decreasing.
    ///
    /// # Errors
    /// [`NnError::Mismatch`] for inputs of another model, packing or key pair, or the wrong
    /// number of ciphertexts; evaluation errors with the node that failed.
    pub fn run(
        &self,
        inputs: EncryptedImages<B>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<EncryptedImages<B>, NnError> {
        inputs.check(
            ImagesKind::Inputs,
            self.plan.fingerprint,
            self.plan.packing(),
            &self.key_id,
        )?;
        let be = self.eval.backend();
        let mut inputs = inputs;
        let cts = inputs.take_ciphertexts();
        match (&*self.plan.plan, &self.encoded) {
            (PackedPlan::Batch(plan), _) => {
                let (out, map) = plan.run_encrypted(&self.eval, cts, &mut progress)?;
                Ok(EncryptedImages::outputs(&inputs, map, out))
            }
            (PackedPlan::Single(plan), Some(encoded)) => {
                let per = plan.input_cts();
                let images = inputs.images();
                if images.checked_mul(per) != Some(cts.len()) {
                    return Err(NnError::Mismatch {
                        what: "input ciphertexts",
                        expected: format!("{per} per image for {images} images"),
                        found: cts.len().to_string(),
                    });
                }
                let mut out = Vec::with_capacity(images.saturating_mul(plan.output_cts()));
                let mut map = crate::batch::OutputMap { a: 1.0, gamma: 0.0 };
                let mut cts = cts.into_iter();
                for i in 0..images {
                    let image: Vec<_> = cts.by_ref().take(per).collect();
                    // Inside the backend's pool, the many small parallel sections of one
                    // image start without a cross-thread handoff each.
                    let (o, m) = be.install(|| plan.run(&self.eval, encoded, image))?;
                    out.extend(o);
                    map = m;
                    progress(i + 1, images);
                }
                Ok(EncryptedImages::outputs(&inputs, map, out))
            }
            (PackedPlan::Single(_), None) => Err(NnError::Internal(
                "the single-image transforms were not encoded".into(),
            )),
        }
    }
}
