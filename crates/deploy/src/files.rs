//! Crash-safe files: a record is written to a unique temporary name, flushed, renamed over
//! its final name and the directory flushed, so after a crash it is either whole or absent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::DeployError;

/// Suffix of temporary files; [`sweep_temporaries`] removes leftovers at start-up.
pub const TEMP_SUFFIX: &str = ".partial";

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|s| s.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}-{n}{TEMP_SUFFIX}", std::process::id()));
    path.with_file_name(name)
}

fn write_with_mode(path: &Path, bytes: &[u8], private: bool) -> Result<(), DeployError> {
    let tmp = temp_name(path);
    let io = |e| DeployError::io(path, e);
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably.
///
/// # Errors
/// [`DeployError::Io`] (a full disk included); the previous content of `path`, if any, is
/// then untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DeployError> {
    write_with_mode(path, bytes, false)
}

/// [`write_atomic`] for a file only its owner may read (mode 0600 on Unix).
///
/// # Errors
/// As [`write_atomic`].
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DeployError> {
    write_with_mode(path, bytes, true)
}

/// Renames durably (the directory entry flushed).
///
/// # Errors
/// [`DeployError::Io`].
pub fn rename_durable(from: &Path, to: &Path) -> Result<(), DeployError> {
    std::fs::rename(from, to).map_err(|e| DeployError::io(from, e))?;
    sync_dir(to).map_err(|e| DeployError::io(to, e))
}

/// Creates `dir` (and its parents) if needed.
///
/// # Errors
/// [`DeployError::Io`].
pub fn ensure_dir(dir: &Path) -> Result<(), DeployError> {
    std::fs::create_dir_all(dir).map_err(|e| DeployError::io(dir, e))
}

/// Removes temporary files a crash left in `dir`; returns how many.
///
/// # Errors
/// [`DeployError::Io`] when the directory cannot be read.
pub fn sweep_temporaries(dir: &Path) -> Result<usize, DeployError> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| DeployError::io(dir, e))? {
        let path = entry.map_err(|e| DeployError::io(dir, e))?.path();
        if path.to_string_lossy().ends_with(TEMP_SUFFIX) {
            std::fs::remove_file(&path).map_err(|e| DeployError::io(&path, e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Files of `dir` with the extension `ext`, sorted by name.
///
/// # Errors
/// [`DeployError::Io`].
pub fn list(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, DeployError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DeployError::io(dir, e))? {
        let path = entry.map_err(|e| DeployError::io(dir, e))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_sweep_leftovers() {
        let dir = std::env::temp_dir().join(format!("hecnn-files-{}", std::process::id()));
        ensure_dir(&dir).unwrap();
        let p = dir.join("a.rec");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        std::fs::write(dir.join(format!("a.rec.1-1{TEMP_SUFFIX}")), b"half").unwrap();
        assert_eq!(sweep_temporaries(&dir).unwrap(), 1);
        assert_eq!(list(&dir, "rec").unwrap(), vec![p.clone()]);
        // A failed write leaves the old content and no temporary.
        assert!(write_atomic(&dir.join("missing").join("x.rec"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
