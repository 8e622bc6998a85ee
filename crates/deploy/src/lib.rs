//! hecnn's services: encrypted inference as a service (HCNN's scenario, [`infer`]), and for
//! protected models (Gomez et al.) the model owner's backend and the edge node, as real HTTP
//! services.
//!
//! - The **inference service** ([`infer`], `hecnn serve`) loads one compiled model and
//!   evaluates it on clients' encrypted images with the evaluation keys each client
//!   registered; jobs are queued with back-pressure and stored durably.
//! - The **owner** ([`owner`]) generates a key pair per model, encrypts the model's
//!   classifier ([`hecnn_nn::protect`]), keeps models, nodes, deployments and results in an
//!   embedded SQLite registry with the secret keys sealed at rest, pushes deployments to edge
//!   nodes (the deployment agent), and decrypts the encrypted results the edges send back
//!   (the decryption agent), which authorised consumers then read through the API.
//! - The **edge** ([`edge`]) receives deployments (a protected model with its public and
//!   evaluation keys — the bundle type has no room for a secret key), takes images from an
//!   HTTP stream or a watched directory, runs the protected model and forwards the encrypted
//!   results to the owner through a durable outbox.
//!
//! Every request carries a bearer token: an administrator's or consumer's on the owner, the
//! per-node token between the owner and an edge, an input token on the edge. Both services
//! speak HTTP/1.1 and HTTP/2, over TLS when given a certificate. Bulk bodies use the
//! versioned binary formats of [`wire`]; everything else is JSON. Records are written
//! atomically (SQLite transactions on the owner, fsync-and-rename files on the edge), and
//! delivery is at-least-once with idempotent receipt, so a crash at any point loses no
//! completed result and leaves no half-written record.

pub mod auth;
mod body;
mod cancel;
mod error;
pub mod files;
pub mod net;
pub mod signing;
pub mod vault;
pub mod wire;

pub mod edge;
pub mod infer;
pub mod owner;

pub use error::{ApiError, DeployError};
