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
    Ok(entries(dir, ext)?
        .into_iter()
        .filter_map(|(path, kind)| (kind == Entry::File).then_some(path))
        .collect())
}

/// What a directory entry is, without following links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    /// A regular file.
    File,
    /// A symbolic link (whatever it points to).
    Link,
    /// A directory or anything else.
    Other,
}

/// The entries of `dir` with extension `ext` and what each is (links are not followed),
/// sorted by name.
///
/// # Errors
/// I/O errors reading the directory.
pub fn entries(dir: &Path, ext: &str) -> Result<Vec<(PathBuf, Entry)>, DeployError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DeployError::io(dir, e))? {
        let entry = entry.map_err(|e| DeployError::io(dir, e))?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != ext) {
            continue;
        }
        let kind = entry.file_type().map_err(|e| DeployError::io(&path, e))?;
        let kind = if kind.is_symlink() {
            Entry::Link
        } else if kind.is_file() {
            Entry::File
        } else {
            Entry::Other
        };
        out.push((path, kind));
    }
    out.sort();
    Ok(out)
}

/// Reads a regular file of at most `limit` bytes, refusing links: the file opened must be
/// the entry checked (same device and inode), so a file swapped for a link between the
/// check and the open is refused too.
///
/// # Errors
/// [`DeployError::Config`] for a link, a non-regular file or one above `limit`; I/O errors.
pub fn read_regular(path: &Path, limit: usize) -> Result<Vec<u8>, DeployError> {
    use std::io::Read;
    let io = |e| DeployError::io(path, e);
    let before = std::fs::symlink_metadata(path).map_err(io)?;
    if !before.file_type().is_file() {
        return Err(DeployError::Config(format!(
            "{}: not a regular file (links are refused)",
            path.display()
        )));
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    // A link is not followed, and a file swapped for a FIFO does not block the open.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = opts.open(path).map_err(io)?;
    let opened = file.metadata().map_err(io)?;
    if !opened.file_type().is_file() {
        return Err(DeployError::Config(format!(
            "{}: not a regular file (replaced while being opened)",
            path.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) {
            return Err(DeployError::Config(format!(
                "{}: replaced while being opened",
                path.display()
            )));
        }
        if opened.nlink() != 1 {
            return Err(DeployError::Config(format!(
                "{}: a file with other hard links (links are refused)",
                path.display()
            )));
        }
    }
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > limit {
        return Err(DeployError::Config(format!(
            "{}: larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn links_are_listed_as_links_and_never_read() {
        let dir = std::env::temp_dir().join(format!("hecnn-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ensure_dir(&dir).unwrap();
        let secret = dir.join("secret.txt");
        std::fs::write(&secret, b"not for the edge").unwrap();
        std::fs::write(dir.join("a.png"), b"pixels").unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("b.png")).unwrap();
        std::fs::create_dir(dir.join("c.png")).unwrap();
        let got: Vec<(String, Entry)> = entries(&dir, "png")
            .unwrap()
            .into_iter()
            .map(|(p, k)| (p.file_name().unwrap().to_string_lossy().into_owned(), k))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.png".into(), Entry::File),
                ("b.png".into(), Entry::Link),
                ("c.png".into(), Entry::Other)
            ]
        );
        assert_eq!(list(&dir, "png").unwrap(), vec![dir.join("a.png")]);
        assert_eq!(read_regular(&dir.join("a.png"), 6).unwrap(), b"pixels");
        let e = read_regular(&dir.join("b.png"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("links are refused"), "{e}");
        assert!(
            read_regular(&dir.join("a.png"), 5).is_err(),
            "over the limit"
        );
        // A file with another hard link is a link too.
        std::fs::hard_link(dir.join("a.png"), dir.join("d.bin")).unwrap();
        let e = read_regular(&dir.join("a.png"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hard links"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

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
