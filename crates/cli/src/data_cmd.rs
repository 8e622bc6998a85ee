//! `hecnn data`: data-set utilities.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hecnn_nn::data;

use crate::{CliError, cnn};

/// Data commands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Write the first images of a data set's test split in the original formats (MNIST IDX,
    /// CIFAR-10 binary); this is how the bundled sample under data/sample was made.
    Sample(SampleArgs),
    /// Print a data set's size, shape and label counts.
    Info(InfoArgs),
    /// Write a whole split of a fetched data set in the original format (IDX for MNIST,
    /// CIFAR binary for CIFAR-10), e.g. for the training script.
    Export(ExportArgs),
}

/// Options of `hecnn data export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// mnist or cifar10 (fetched with scripts/fetch-data.sh).
    #[arg(long)]
    dataset: String,
    /// train or test.
    #[arg(long, default_value = "train")]
    split: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

/// Options of `hecnn data sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// mnist or cifar10 (fetched with scripts/fetch-data.sh).
    #[arg(long)]
    dataset: String,
    /// Number of images.
    #[arg(long, default_value_t = 300)]
    count: usize,
    /// Output directory.
    #[arg(long, default_value = "data/sample")]
    out: PathBuf,
}

/// Options of `hecnn data info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A data-set selection (see `hecnn eval --help`).
    data: String,
}

pub fn run(cmd: &DataCommand) -> Result<(), CliError> {
    match cmd {
        DataCommand::Sample(a) => {
            let ds = cnn::load_data(&a.dataset)?;
            // Interleave classes so a prefix of the sample is balanced.
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 10];
            for (i, &l) in ds.labels().iter().enumerate() {
                by_class[usize::from(l)].push(i);
            }
            let mut order = Vec::with_capacity(a.count);
            let mut k = 0;
            while order.len() < a.count.min(ds.len()) {
                for class in &by_class {
                    if let Some(&i) = class.get(k)
                        && order.len() < a.count
                    {
                        order.push(i);
                    }
                }
                k += 1;
            }
            let per: usize = ds.shape().iter().product();
            let mut pixels = Vec::with_capacity(order.len() * per);
            let mut labels = Vec::with_capacity(order.len());
            for &i in &order {
                pixels.extend_from_slice(ds.pixels(i));
                labels.push(ds.labels()[i]);
            }
            let sample = data::Dataset::new(ds.shape(), pixels, labels)?;
            std::fs::create_dir_all(&a.out)
                .map_err(|e| CliError::Usage(format!("{}: {e}", a.out.display())))?;
            match a.dataset.as_str() {
                "mnist" => data::save_idx(
                    &sample,
                    &a.out.join("mnist-test-images.idx3-ubyte"),
                    &a.out.join("mnist-test-labels.idx1-ubyte"),
                )?,
                "cifar10" => data::save_cifar_binary(&sample, &a.out.join("cifar10-test.bin"))?,
                other => {
                    return Err(CliError::Usage(format!(
                        "sample: mnist or cifar10, not '{other}'"
                    )));
                }
            }
            println!(
                "wrote {} {} test images to {}",
                sample.len(),
                a.dataset,
                a.out.display()
            );
        }
        DataCommand::Export(a) => {
            let (train, test) = cnn::load_split_pair(&a.dataset)?;
            let ds = match a.split.as_str() {
                "train" => train,
                "test" => test,
                other => {
                    return Err(CliError::Usage(format!(
                        "--split train or test, not '{other}'"
                    )));
                }
            };
            std::fs::create_dir_all(&a.out)
                .map_err(|e| CliError::Usage(format!("{}: {e}", a.out.display())))?;
            match a.dataset.as_str() {
                "mnist" => data::save_idx(
                    &ds,
                    &a.out.join(format!("mnist-{}-images.idx3-ubyte", a.split)),
                    &a.out.join(format!("mnist-{}-labels.idx1-ubyte", a.split)),
                )?,
                _ => data::save_cifar_binary(&ds, &a.out.join(format!("cifar10-{}.bin", a.split)))?,
            }
            println!(
                "wrote {} {} {} images to {}",
                ds.len(),
                a.dataset,
                a.split,
                a.out.display()
            );
        }
        DataCommand::Info(a) => {
            let ds = cnn::load_data(&a.data)?;
            let mut counts = [0usize; 10];
            for &l in ds.labels() {
                counts[usize::from(l)] += 1;
            }
            println!(
                "{}: {} images of shape {:?}; per class {counts:?}",
                a.data,
                ds.len(),
                ds.shape()
            );
        }
    }
    Ok(())
}
