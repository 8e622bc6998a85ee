//! The data-set loaders (`hecnn_nn::data`): CIFAR-10's binary format
//! (`parse_cifar_binary`, the whole input) and MNIST's IDX pair (`parse_idx`): the first
//! four bytes (little-endian) give the length of the images file, the images file follows,
//! the labels file is the rest.
#![no_main]

use hecnn_nn::data::{parse_cifar_binary, parse_idx};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_cifar_binary(data);
    if let Some((len, rest)) = data.split_first_chunk::<4>() {
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        let (images, labels) = rest.split_at(len);
        let _ = parse_idx(images, labels);
    }
});
