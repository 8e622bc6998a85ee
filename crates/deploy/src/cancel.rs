//! Blocking work that stops when the request that asked for it is gone.
//!
//! A handler that hands heavy work to a blocking thread holds a [`RequestGuard`] across the
//! `await`. When the client disconnects, the HTTP server drops the handler's future, the
//! guard's `Drop` raises the flag, and the work, which asks [`Cancel::is_set`] between its
//! stages, stops at the next one instead of spinning the cores for nobody (and, for a model
//! upload, registers nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;

use crate::ApiError;

/// Raises its [`Cancel`] flag when dropped: keep it alive in the request's future.
#[derive(Debug)]
pub struct RequestGuard(Arc<AtomicBool>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The blocking side: whether the request is gone.
#[derive(Clone, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Whether the request that started the work is gone.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// An error when the request is gone, logged with the work and the stage it reached
    /// (nobody is left to read the answer).
    ///
    /// # Errors
    /// [`ApiError`] `499 cancelled` once the guard is dropped.
    pub fn check(&self, work: &str, stage: &str) -> Result<(), ApiError> {
        if self.is_set() {
            Err(cancelled(work, stage))
        } else {
            Ok(())
        }
    }
}

/// The error of `work` stopped at `stage` because its request went away; logs it.
pub fn cancelled(work: &str, stage: &str) -> ApiError {
    let message = format!("{work}: the client went away; stopped at {stage}");
    eprintln!("{message}");
    ApiError::new(
        // "Client Closed Request": the status servers log for answers nobody reads.
        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        "cancelled",
        message,
    )
}

/// A guard for the request's future and the flag for its blocking work.
pub fn request_scope() -> (RequestGuard, Cancel) {
    let flag = Arc::new(AtomicBool::new(false));
    (RequestGuard(Arc::clone(&flag)), Cancel(flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_sets_the_flag() {
        let (guard, cancel) = request_scope();
        assert!(!cancel.is_set());
        assert!(cancel.check("upload", "start").is_ok());
        drop(guard);
        assert!(cancel.is_set());
        let err = cancel.check("upload", "keys").err();
        assert!(err.is_some_and(|e| e.code == "cancelled" && e.message.contains("keys")));
    }
}
