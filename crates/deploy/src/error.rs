//! Errors of the services, and their HTTP form.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Errors of the deployment services outside a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// From the model layer (import, protection, wire formats).
    #[error(transparent)]
    Nn(#[from] hecnn_nn::NnError),
    /// From the CKKS layer.
    #[error(transparent)]
    Ckks(#[from] hecnn_ckks::CkksError),
    /// From the RLWE layer (keys).
    #[error(transparent)]
    Rlwe(#[from] hecnn_rlwe::RlweError),
    /// From the ring layer (backend, randomness).
    #[error(transparent)]
    Ring(#[from] hecnn_ring::RingError),
    /// The registry database.
    #[error("registry: {0}")]
    Db(#[from] rusqlite::Error),
    /// A file of the service's state.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bad configuration (addresses, certificates, tokens).
    #[error("configuration: {0}")]
    Config(String),
    /// A protected model's owner signature is missing, of another owner, or broken.
    #[error("signature: {0}")]
    Signature(String),
    /// Malformed or mismatched data in a wire format.
    #[error("wire format: {0}")]
    Wire(String),
    /// A sealed secret could not be opened (wrong master key or tampered data).
    #[error("sealed data could not be opened: wrong master key or tampered record")]
    Unseal,
    /// Another service answered with an error.
    #[error("{url}: HTTP {status}: {message}")]
    Remote {
        /// The request's address.
        url: String,
        /// The status code.
        status: u16,
        /// The error message from the body.
        message: String,
    },
    /// No model is deployed on the edge yet.
    #[error("no model is deployed on this node")]
    NoDeployment,
    /// An input id whose result still waits for the owner.
    #[error("input {0}: a result for this id is still waiting for the owner; ids must be unique")]
    DuplicateInput(String),
    /// A deployment older than the one the edge runs.
    #[error("deployment {offered} is older than the running deployment {current}")]
    StaleDeployment {
        /// The deployment offered.
        offered: u64,
        /// The deployment running.
        current: u64,
    },
    /// Another service could not be reached (the message names the cause: refused,
    /// timed out, TLS, …).
    #[error("{}", describe_http(.0))]
    Http(#[from] reqwest::Error),
}

/// A request error with its causes: reqwest's own message is only "error sending request
/// for url (…)"; the cause (connection refused, certificate unknown, timeout) is in its
/// source chain.
fn describe_http(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    if e.is_timeout() {
        out.push_str(": timed out");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

impl DeployError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// An error answered to a request: an HTTP status, a stable machine-readable code and a
/// message, sent as `{"error": code, "message": message}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short stable code, e.g. `unauthorized`, `unknown_model`, `version_mismatch`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    /// 401: no or a wrong token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }
    /// 404: an unknown object.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    /// 409: the request does not match the current state (e.g. another model version).
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 405: the route exists, not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take this method (see the API table in docs/services.md)",
        )
    }
    /// 422: well-formed but invalid content (e.g. a ciphertext of the wrong shape).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_content", message)
    }
    /// 413: the body is too large.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    }
    /// 500: the service failed; the message is logged, the caller gets a generic one.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        eprintln!("internal error: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the service's log)",
        )
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Wire(m) => Self::bad_request(m),
            e @ DeployError::NoDeployment => Self::conflict("no_deployment", e.to_string()),
            e @ DeployError::DuplicateInput(_) => Self::conflict("duplicate_input", e.to_string()),
            e @ DeployError::StaleDeployment { .. } => {
                Self::conflict("stale_deployment", e.to_string())
            }
            DeployError::Signature(m) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_signature", m)
            }
            DeployError::Nn(e) => Self::invalid(e.to_string()),
            DeployError::Rlwe(e) => Self::invalid(e.to_string()),
            DeployError::Ckks(e) => Self::invalid(e.to_string()),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod http_tests {
    #[test]
    fn a_refused_connection_names_its_cause() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(
                reqwest::Client::new()
                    .get(format!("http://127.0.0.1:{port}/"))
                    .send(),
            )
            .unwrap_err();
        let msg = super::DeployError::from(e).to_string();
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}
