//! Progress for steps that take seconds or more (key generation, loading keys, setting up
//! a server, calibrating): a spinner with the step's name and the time so far, drawn on
//! stderr only when it is a terminal (logs and pipes get the commands' final lines alone),
//! and cleared when the step ends.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A step under way; dropping it clears its line.
pub(crate) struct Step(ProgressBar);

impl Drop for Step {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Starts showing `what` ("generating keys", …) with a spinner and the elapsed time.
pub(crate) fn step(what: impl Into<String>) -> Step {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(what.into());
    pb.enable_steady_tick(Duration::from_millis(120));
    Step(pb)
}
