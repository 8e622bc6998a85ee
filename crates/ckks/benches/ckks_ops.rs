//! CKKS primitives at logN = 14 (preset N14_QP427, 7 levels) and logN = 16 (preset
//! N16_QP1401, 24 levels, dnum 3), one and two threads: NTT of all Q limbs, mul+relin,
//! rescale, rotate, 8 hoisted rotations, public-key encryption, decryption.
//!
//! Run: `cargo bench -p hecnn-ckks --bench ckks_ops` (`-- logN=14` to filter).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hecnn_ckks::{Decryptor, Evaluator, Preset, encrypt_pk, encrypt_sk};
use hecnn_ring::{Backend, Basis, CpuBackend, Prng};
use hecnn_rlwe::{KeyRequirements, SecretKey};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_preset(c: &mut Criterion, preset: Preset) {
    let params = preset.build().expect("preset");
    let r = params.rlwe();
    let mut rng = Prng::from_seed([9; 32]);
    let sk = SecretKey::generate(r, &mut rng).expect("sk");
    let hoist: Vec<i64> = (1..=8).collect();
    let keygen_be = CpuBackend::new(0).expect("backend");
    let pk = sk.public_key(&keygen_be, &mut rng).expect("pk");
    let keys = Arc::new(
        sk.evaluation_keys(
            &keygen_be,
            &KeyRequirements::relin().with_rotations(hoist.clone()),
            &mut rng,
        )
        .expect("keys"),
    );
    let slots = params.max_slots();
    let top = params.max_level();
    let x: Vec<f64> = (0..slots)
        .map(|i| ((i * 7919) % 1000) as f64 / 500.0 - 1.0)
        .collect();
    let mut group = c.benchmark_group("ckks");
    group.sample_size(10);
    for threads in [1usize, 2] {
        let be = CpuBackend::new(threads).expect("backend");
        let eval =
            Evaluator::new(Arc::clone(&params), Arc::clone(&keys), be.clone()).expect("eval");
        let pt = eval
            .encode_real(&x, top, params.default_scale(), slots)
            .expect("encode");
        let ct = encrypt_sk(&sk, &be, &pt, &mut rng).expect("encrypt");
        let ct2 = encrypt_sk(&sk, &be, &pt, &mut rng).expect("encrypt");
        let prod = eval.mul_relin(&ct, &ct2).expect("mul");
        let tag = format!("logN={}/limbs={}/threads={threads}", r.log_n(), top + 1);
        let ctx = r.ctx();
        let mut poly = pt.poly().clone();
        group.bench_function(format!("ntt/{tag}"), |b| {
            b.iter(|| be.ntt_forward(ctx, Basis::q(top + 1), poly.buffer_mut()))
        });
        group.bench_function(format!("mul_relin/{tag}"), |b| {
            b.iter(|| eval.mul_relin(&ct, &ct2))
        });
        group.bench_function(format!("rescale/{tag}"), |b| b.iter(|| eval.rescale(&prod)));
        group.bench_function(format!("rotate/{tag}"), |b| b.iter(|| eval.rotate(&ct, 1)));
        group.bench_function(format!("hoisted_rotate8/{tag}"), |b| {
            b.iter(|| eval.rotate_hoisted(&ct, &hoist))
        });
        group.bench_function(format!("encrypt_pk/{tag}"), |b| {
            b.iter(|| encrypt_pk(&pk, &be, &pt, &mut rng))
        });
        let decryptor = Decryptor::new(&sk, &be).expect("decryptor");
        group.bench_function(format!("decrypt/{tag}"), |b| {
            b.iter(|| decryptor.decrypt(&ct))
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_preset(c, Preset::N14Qp427);
    bench_preset(c, Preset::N16Qp1401);
}

criterion_group!(ckks, benches);
criterion_main!(ckks);
