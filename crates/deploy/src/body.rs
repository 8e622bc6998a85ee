//! Bounded request bodies.

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;

use crate::ApiError;

/// Reads a whole body, refusing more than `limit` bytes with 413 (before reading, when the
/// declared length is already too large).
///
/// # Errors
/// [`ApiError::too_large`].
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}
