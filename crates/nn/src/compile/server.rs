//! The inference server's side: a [`ServerPlan`] and the evaluation keys of one client make
//! a [`Server`], which evaluates that client's [`EncryptedImages`]. No secret key is ever
//! involved.

use std::sync::Arc;

use hecnn_ckks::bootstrap::Refresh;
use hecnn_ckks::{Bootstrapper, CkksParams, Evaluator, LinearTransform, Plaintext};
use hecnn_ring::Backend;
use hecnn_rlwe::{EncapsulationKeys, EvaluationKeys, KeyRequirements, KeyStorage};

use super::client::{ClientSpec, EncryptedImages, ImagesKind, short};
use super::{CompiledModel, PackedPlan, PackingKind, RefreshRecord};
use crate::{
    NnError,
    single::{EncodedSingle, Lowering},
};

/// What an inference server runs: the plan, its parameters and the keys it needs.
#[derive(Clone, Debug)]
pub struct ServerPlan {
    fingerprint: [u8; 32],
    params: Arc<CkksParams>,
    plan: Arc<PackedPlan>,
    spec: ClientSpec,
    refresh: Option<RefreshRecord>,
    lowering: Lowering,
    key_storage: KeyStorage,
}

impl ServerPlan {
    pub(super) fn of(c: &CompiledModel) -> Self {
        Self {
            fingerprint: c.fingerprint(),
            params: Arc::clone(c.params()),
            plan: Arc::clone(&c.plan),
            spec: c.client_spec(),
            refresh: c.refresh().copied(),
            lowering: c.default_lowering(),
            key_storage: c.default_key_storage(),
        }
    }

    /// The plan with the evaluation keys held as `storage` says (default: compact for a
    /// plan that bootstraps, whose keys at N = 2^16 take most of the memory; expanded
    /// otherwise). The server compacts keys handed to it expanded; a client making keys
    /// for it in the same process makes them compact from the start
    /// ([`crate::compile::Client::keygen_with`]).
    pub fn with_key_storage(mut self, storage: KeyStorage) -> Self {
        self.key_storage = storage;
        self
    }

    /// How the server holds its evaluation keys.
    pub fn key_storage(&self) -> KeyStorage {
        self.key_storage
    }

    /// The plan with its single-image diagonals encoded as `lowering` says (default: on the
    /// fly for a plan that bootstraps, whose diagonals do not fit in memory at once; once
    /// otherwise).
    pub fn with_lowering(mut self, lowering: Lowering) -> Self {
        self.lowering = lowering;
        self
    }

    /// When the server encodes the single-image diagonals.
    pub fn lowering(&self) -> Lowering {
        self.lowering
    }

    /// How the plan bootstraps, if it does.
    pub fn refresh(&self) -> Option<&RefreshRecord> {
        self.refresh.as_ref()
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
        if req.relin {
            let top = self.params.max_level();
            match keys.relin() {
                Err(_) => {
                    return Err(NnError::Mismatch {
                        what: "evaluation keys",
                        expected: "a relinearization key".into(),
                        found: "none".into(),
                    });
                }
                Ok(k) if k.max_level() < top => {
                    return Err(NnError::Mismatch {
                        what: "evaluation keys",
                        expected: format!("a relinearization key up to level {top}"),
                        found: format!("one up to level {}", k.max_level()),
                    });
                }
                Ok(_) => {}
            }
        }
        let needed = req.galois_levels(self.params.rlwe());
        for (&g, &level) in &needed {
            match keys.galois(g) {
                Err(_) => {
                    return Err(NnError::Mismatch {
                        what: "evaluation keys",
                        expected: format!("{} rotation keys", needed.len()),
                        found: format!("none for Galois element {g}"),
                    });
                }
                Ok(k) if k.max_level() < level => {
                    return Err(NnError::Mismatch {
                        what: "evaluation keys",
                        expected: format!("the key of Galois element {g} up to level {level}"),
                        found: format!("one up to level {}", k.max_level()),
                    });
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

/// A server for one client's key pair: the evaluator over its evaluation keys and, for
/// single-image packing, the plan's transforms encoded once for every image (or on the fly,
/// [`ServerPlan::with_lowering`]).
pub struct Server<B: Backend> {
    plan: ServerPlan,
    eval: Evaluator<B>,
    key_id: [u8; 32],
    encoded: Option<EncodedSingle<LinearTransform<B>, Plaintext<B>>>,
}

impl<B: Backend> Server<B> {
    /// Builds the server: checks the keys against the plan and lowers it (single-image
    /// packing encodes its diagonals at their levels). A plan that bootstraps needs
    /// [`Server::bootstrapping`].
    ///
    /// # Errors
    /// Keys of other parameters or missing a key the plan needs; a plan that bootstraps;
    /// encoding errors.
    pub fn new(plan: ServerPlan, keys: EvaluationKeys<B>, backend: B) -> Result<Self, NnError> {
        if plan.refresh.is_some() {
            return Err(NnError::Mismatch {
                what: "server keys",
                expected: "bootstrapping's encapsulation keys (the plan bootstraps)".into(),
                found: "evaluation keys only".into(),
            });
        }
        Self::build(plan, keys, backend, None)
    }

    /// Builds the server of a plan that bootstraps, from the client's evaluation and
    /// encapsulation keys (the bootstrapping circuit is encoded here).
    ///
    /// # Errors
    /// As [`Server::new`]; encapsulation keys of another key pair or weight; a plan that
    /// does not bootstrap.
    pub fn bootstrapping(
        plan: ServerPlan,
        keys: EvaluationKeys<B>,
        encapsulation: EncapsulationKeys<B>,
        backend: B,
    ) -> Result<Self, NnError> {
        let config = plan
            .refresh
            .ok_or_else(|| NnError::Mismatch {
                what: "server keys",
                expected: "evaluation keys only (the plan does not bootstrap)".into(),
                found: "encapsulation keys too".into(),
            })?
            .config();
        Self::with_refresh(plan, keys, backend, move |eval| {
            Ok(Arc::new(Bootstrapper::new(eval, config, encapsulation)?))
        })
    }

    /// Builds the server of a plan that bootstraps with the refresh `make` builds for its
    /// evaluator: [`Server::bootstrapping`]'s circuit, or in tests the secret-key test
    /// double (`hecnn_ckks::bootstrap::test_double`), which runs the same plan in
    /// milliseconds.
    ///
    /// # Errors
    /// As [`Server::new`]; those of `make`.
    pub fn with_refresh(
        plan: ServerPlan,
        keys: EvaluationKeys<B>,
        backend: B,
        make: impl FnOnce(&Evaluator<B>) -> Result<Arc<dyn Refresh<B> + Send + Sync>, NnError>,
    ) -> Result<Self, NnError> {
        Self::build(plan, keys, backend, Some(Box::new(make)))
    }

    #[allow(clippy::type_complexity)]
    fn build(
        plan: ServerPlan,
        keys: EvaluationKeys<B>,
        backend: B,
        make: Option<
            Box<
                dyn FnOnce(&Evaluator<B>) -> Result<Arc<dyn Refresh<B> + Send + Sync>, NnError>
                    + '_,
            >,
        >,
    ) -> Result<Self, NnError> {
        plan.check_keys(&keys)?;
        let key_id = keys.key_id();
        let mut keys = keys;
        if plan.key_storage == KeyStorage::Compact {
            keys.compact();
        }
        let mut eval = Evaluator::new(Arc::clone(&plan.params), Arc::new(keys), backend)?;
        if let Some(make) = make {
            let refresh = make(&eval)?;
            if let Some(r) = &plan.refresh {
                let want = r.levels(&plan.params)?;
                if refresh.output_level() != want {
                    return Err(NnError::Mismatch {
                        what: "refresh's output level",
                        expected: want.to_string(),
                        found: refresh.output_level().to_string(),
                    });
                }
            }
            eval = eval.with_refresh(refresh);
        }
        let top = plan.spec.input_level();
        let encoded = match &*plan.plan {
            PackedPlan::Batch(_) => None,
            PackedPlan::Single(p) => {
                Some(p.lower(&eval, top, plan.params.default_scale(), plan.lowering)?)
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
        progress: impl FnMut(usize, usize),
    ) -> Result<EncryptedImages<B>, NnError> {
        self.run_profiled(inputs, progress, |_, _, _| {})
    }

    /// Checks, without consuming them, that `inputs` are inputs for this server's model,
    /// packing and key pair: what [`Server::run`] checks before it takes them (a caller that
    /// must keep refused inputs checks first).
    ///
    /// # Errors
    /// [`NnError::Mismatch`] naming what differs.
    pub fn check_inputs(&self, inputs: &EncryptedImages<B>) -> Result<(), NnError> {
        inputs.check(
            ImagesKind::Inputs,
            self.plan.fingerprint,
            self.plan.packing(),
            &self.key_id,
        )
    }

    /// As [`Server::run`], calling `on_stage(image, time, ops)` after every stage of a
    /// single-image plan, and after every refresh, with its time and the operations it ran,
    /// for breakdowns.
    ///
    /// # Errors
    /// As [`Server::run`].
    pub fn run_profiled(
        &self,
        inputs: EncryptedImages<B>,
        progress: impl FnMut(usize, usize),
        on_stage: impl FnMut(usize, crate::single::StageTime, hecnn_ckks::OpCounts) + Send,
    ) -> Result<EncryptedImages<B>, NnError> {
        self.run_unless(inputs, progress, on_stage, &|| false)
    }

    /// [`Server::run_profiled`], asking `cancelled` after every layer (batch packing) or
    /// image (single-image packing) and stopping with [`NnError::Cancelled`] once it says
    /// so: a caller that went away, a user's Ctrl-C. The inputs are consumed either way.
    ///
    /// # Errors
    /// As [`Server::run`]; [`NnError::Cancelled`].
    pub fn run_unless(
        &self,
        inputs: EncryptedImages<B>,
        mut progress: impl FnMut(usize, usize),
        mut on_stage: impl FnMut(usize, crate::single::StageTime, hecnn_ckks::OpCounts) + Send,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<EncryptedImages<B>, NnError> {
        self.check_inputs(&inputs)?;
        let be = self.eval.backend();
        let mut inputs = inputs;
        let cts = inputs.take_ciphertexts();
        match (&*self.plan.plan, &self.encoded) {
            (PackedPlan::Batch(plan), _) => {
                let (out, map) = plan.run_unless(&self.eval, cts, &mut progress, cancelled)?;
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
                    let mut last = self.eval.op_counts();
                    let mut observe = |t: crate::single::StageTime| {
                        let now = self.eval.op_counts();
                        on_stage(i, t, now.since(&last));
                        last = now;
                    };
                    let (o, m) =
                        be.install(|| plan.run_observed(&self.eval, encoded, image, &mut observe))?;
                    out.extend(o);
                    map = m;
                    progress(i + 1, images);
                    if cancelled() && i + 1 < images {
                        return Err(NnError::Cancelled(format!(
                            "single-image evaluation after image {} of {images}",
                            i + 1
                        )));
                    }
                }
                Ok(EncryptedImages::outputs(&inputs, map, out))
            }
            (PackedPlan::Single(_), None) => Err(NnError::Internal(
                "the single-image transforms were not encoded".into(),
            )),
        }
    }
}
