//! Running the `hecnn` binary from the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `hecnn args…` in the repository root; whether it succeeded, and its stdout and
/// stderr together.
pub fn hecnn(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hecnn"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
