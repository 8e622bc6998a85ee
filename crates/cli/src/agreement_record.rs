//! A resumable, image-by-image record of an encrypted evaluation (`hecnn eval --record`).
//!
//! Checking single-image mode on a whole test split takes hours (CIFAR-10: about 0.75 s
//! per image on two cores, two hours for the test split); the record makes that work
//! survive interruptions and add up across runs. It is a CSV file with one header line
//! naming what produced it (model, data, parameters) and one line per image, flushed as
//! soon as the image is done:
//!
//! ```text
//! # hecnn agreement record v1: model=hcnn-cifar10 data=cifar10 mode=single log_n=14 ...
//! index,label,cleartext,encrypted,max_abs_diff,cleartext_margin
//! 0,3,3,3,1.2e-1,4.1
//! ```
//!
//! A run appending to an existing record first checks its header against its own (a record
//! from another model or other parameters is refused), then skips the images already in it.
//! The summary is always over the whole record.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::CliError;
use crate::stats::Agreement;

const COLUMNS: &str = "index,label,cleartext,encrypted,max_abs_diff,cleartext_margin";

/// One image's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageOutcome {
    /// Position in the whole data set.
    pub index: usize,
    /// True class.
    pub label: usize,
    /// Cleartext prediction.
    pub cleartext: usize,
    /// Encrypted prediction.
    pub encrypted: usize,
    /// Largest |encrypted − cleartext| logit.
    pub max_abs_diff: f64,
    /// Cleartext top-1 minus top-2 logit: how close a call the image is.
    pub cleartext_margin: f64,
}

/// The `encrypted` class of an image the plan could not classify: a simulated value left
/// the range its parameters or a refresh hold (written as `usize::MAX`, with an infinite
/// logit difference).
pub const OUT_OF_RANGE: usize = usize::MAX;

impl ImageOutcome {
    /// The outcome of an image the plan could not classify ([`OUT_OF_RANGE`]), against its
    /// cleartext logits `want`.
    pub fn out_of_range(index: usize, label: usize, want: &[f64]) -> Self {
        Self {
            encrypted: OUT_OF_RANGE,
            max_abs_diff: f64::INFINITY,
            ..Self::new(index, label, want, want)
        }
    }

    /// The outcome of one image from its decrypted logits `got` and cleartext logits `want`.
    pub fn new(index: usize, label: usize, got: &[f64], want: &[f64]) -> Self {
        let mut sorted = want.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        Self {
            index,
            label,
            cleartext: hecnn_nn::exec::argmax(want),
            encrypted: hecnn_nn::exec::argmax(got),
            max_abs_diff: got
                .iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0, f64::max),
            cleartext_margin: match sorted.as_slice() {
                [a, b, ..] => a - b,
                _ => f64::INFINITY,
            },
        }
    }

    fn to_line(&self) -> String {
        format!(
            "{},{},{},{},{:.4e},{:.4e}",
            self.index,
            self.label,
            self.cleartext,
            self.encrypted,
            self.max_abs_diff,
            self.cleartext_margin
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(',').collect();
        let [index, label, cleartext, encrypted, diff, margin] = f.as_slice() else {
            return None;
        };
        Some(Self {
            index: index.parse().ok()?,
            label: label.parse().ok()?,
            cleartext: cleartext.parse().ok()?,
            encrypted: encrypted.parse().ok()?,
            max_abs_diff: diff.parse().ok()?,
            cleartext_margin: margin.parse().ok()?,
        })
    }
}

/// An open record, appending.
pub struct AgreementRecord {
    path: PathBuf,
    file: File,
    outcomes: Vec<ImageOutcome>,
}

impl AgreementRecord {
    /// Opens (or creates) the record at `path` for a run described by `header` (one line,
    /// `key=value` pairs); returns it with the outcomes it already holds.
    ///
    /// # Errors
    /// I/O errors, a record made by a different run (another header), malformed lines.
    pub fn open(path: &Path, header: &str) -> Result<Self, CliError> {
        let io = |e: std::io::Error| CliError::Usage(format!("{}: {e}", path.display()));
        let first = format!("# hecnn agreement record v1: {header}");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // Two runs appending to one record would interleave their lines.
        file.try_lock().map_err(|_| {
            CliError::Usage(format!(
                "{}: another run is appending to this record",
                path.display()
            ))
        })?;
        let mut text = String::new();
        BufReader::new(&file)
            .read_to_string(&mut text)
            .map_err(io)?;
        // A run stopped mid-line leaves a fragment without its newline: drop it (the image
        // runs again) rather than refuse the record.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            eprintln!(
                "{}: dropping an unfinished last line ({} bytes) left by an interrupted run",
                path.display(),
                text.len() - complete
            );
            file.set_len(complete as u64).map_err(io)?;
            text.truncate(complete);
        }
        let mut outcomes: Vec<ImageOutcome> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut lines = text.lines();
        match lines.next() {
            // New (or emptied before its header was written).
            None => writeln!(file, "{first}\n{COLUMNS}").map_err(io)?,
            Some(got) if got != first => {
                return Err(CliError::Usage(format!(
                    "{} was recorded by another run:\n  it has   {got}\n  this run {first}\n(use another --record file)",
                    path.display()
                )));
            }
            Some(_) => {}
        }
        for (n, line) in lines.enumerate() {
            if n == 0 && line == COLUMNS || line.is_empty() {
                continue;
            }
            let o = ImageOutcome::parse(line).ok_or_else(|| {
                CliError::Usage(format!(
                    "{}: line {} is not a record line: {line:?}",
                    path.display(),
                    n + 2
                ))
            })?;
            // The first outcome of an image counts (records joined by hand may repeat one).
            if seen.insert(o.index) {
                outcomes.push(o);
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            outcomes,
        })
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data-set positions already recorded.
    pub fn done(&self) -> BTreeSet<usize> {
        self.outcomes.iter().map(|o| o.index).collect()
    }

    /// Appends one outcome and flushes it to the file.
    ///
    /// # Errors
    /// I/O errors (a full disk): the outcome is then not recorded.
    pub fn push(&mut self, o: ImageOutcome) -> Result<(), CliError> {
        // One write per line, so an interruption leaves at most one unfinished line.
        self.file
            .write_all(format!("{}\n", o.to_line()).as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| CliError::Usage(format!("{}: {e}", self.path.display())))?;
        self.outcomes.push(o);
        Ok(())
    }

    /// The agreement over the whole record (one outcome per image).
    pub fn summary(&self) -> Agreement {
        let mut a = Agreement::default();
        for o in &self.outcomes {
            a.add(o);
        }
        a
    }

    /// The recorded images the encrypted run classified differently, with their margins.
    pub fn disagreements(&self) -> Vec<&ImageOutcome> {
        self.outcomes
            .iter()
            .filter(|o| o.cleartext != o.encrypted)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hecnn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn an_outcome_has_its_predictions_error_and_margin() {
        let o = ImageOutcome::new(7, 2, &[0.0, 1.2, 0.9], &[0.1, 1.0, 1.1]);
        assert_eq!((o.cleartext, o.encrypted), (2, 1));
        assert!((o.max_abs_diff - 0.2).abs() < 1e-12);
        assert!((o.cleartext_margin - 0.1).abs() < 1e-12);
        assert_eq!(ImageOutcome::parse(&o.to_line()).map(|p| p.index), Some(7));
        // An image the plan could not classify is a disagreement that survives a resume.
        let o = ImageOutcome::out_of_range(9, 2, &[0.1, 1.0, 1.1]);
        assert_eq!((o.cleartext, o.encrypted), (2, OUT_OF_RANGE));
        let back = ImageOutcome::parse(&o.to_line()).unwrap();
        assert_eq!(back.encrypted, OUT_OF_RANGE);
        assert!(back.max_abs_diff.is_infinite());
    }

    #[test]
    fn a_record_resumes_and_sums_over_all_its_runs() {
        let path = temp("resume.csv");
        let mut r = AgreementRecord::open(&path, "model=m data=d").unwrap();
        assert!(r.done().is_empty());
        r.push(ImageOutcome::new(0, 1, &[0.0, 1.0], &[0.0, 1.0]))
            .unwrap();
        r.push(ImageOutcome::new(1, 0, &[1.0, 0.0], &[0.4, 0.5]))
            .unwrap();
        drop(r);
        let mut r = AgreementRecord::open(&path, "model=m data=d").unwrap();
        assert_eq!(r.done(), BTreeSet::from([0, 1]));
        r.push(ImageOutcome::new(5, 0, &[1.0, 0.0], &[1.0, 0.0]))
            .unwrap();
        assert_eq!(r.summary().counts(), (3, 2, 3, 2));
        assert_eq!(r.disagreements().len(), 1);
        assert_eq!(r.disagreements()[0].index, 1);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn another_runs_record_and_damaged_lines_are_refused() {
        let path = temp("other.csv");
        drop(AgreementRecord::open(&path, "model=m data=d").unwrap());
        let err = AgreementRecord::open(&path, "model=m data=other")
            .err()
            .unwrap();
        assert!(err.to_string().contains("another run"), "{err}");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "3,1,oops").unwrap();
        let err = AgreementRecord::open(&path, "model=m data=d")
            .err()
            .unwrap();
        assert!(err.to_string().contains("line 3"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_interrupted_line_is_dropped_and_repeats_count_once() {
        let path = temp("torn.csv");
        let mut r = AgreementRecord::open(&path, "model=m").unwrap();
        r.push(ImageOutcome::new(0, 1, &[0.0, 1.0], &[0.0, 1.0]))
            .unwrap();
        drop(r);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        write!(f, "0,1,1,1,0e0,1e0\n1,0,0,0,1.0e-").unwrap();
        drop(f);
        let r = AgreementRecord::open(&path, "model=m").unwrap();
        assert_eq!(r.done(), BTreeSet::from([0]));
        assert_eq!(r.summary().counts().0, 1);
        // The fragment is gone from the file, and a second open holds the lock.
        assert!(!std::fs::read_to_string(&path).unwrap().contains("1.0e-"));
        let err = AgreementRecord::open(&path, "model=m").err().unwrap();
        assert!(
            err.to_string().contains("another run is appending"),
            "{err}"
        );
        drop(r);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_empty_file_is_a_new_record() {
        let path = temp("empty.csv");
        std::fs::write(&path, "").unwrap();
        drop(AgreementRecord::open(&path, "model=m").unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# hecnn agreement record v1: model=m\n"),
            "{text}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
