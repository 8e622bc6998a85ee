//! Ring kernels: NTT (scalar reference vs tfhe-ntt), and the key-switching building blocks
//! (ModUp of one digit, ModDown, multiply-sum, rescale), single thread and 2 threads.
//!
//! Run: `cargo bench -p hecnn-ring --bench ring_ops` (`-- ntt` to filter).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hecnn_ring::{Backend, Basis, Coeff, CpuBackend, NttKind, RnsContext, RnsPoly, prime, sampler};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn context(log_n: u32, q: usize, p: usize, bits: u32, kind: NttKind) -> RnsContext {
    let qs = prime::ntt_primes(bits, log_n, q).unwrap_or_default();
    let ps = prime::ntt_primes_excluding(bits, log_n, p, &qs).unwrap_or_default();
    RnsContext::new(log_n, &qs, &ps, kind).expect("context")
}

fn ntt(c: &mut Criterion) {
    let mut g = c.benchmark_group("ntt_forward");
    for log_n in [14u32, 16] {
        for bits in [49u32, 59] {
            for kind in [NttKind::Scalar, NttKind::Fast] {
                let ctx = context(log_n, 1, 0, bits, kind);
                let mut a = sampler::expand_uniform(&[1; 32], &ctx, Basis::q(1));
                let id = format!("{kind:?}/logN={log_n}/bits={bits}");
                g.bench_function(BenchmarkId::from_parameter(id), |b| {
                    b.iter(|| ctx.ntt(0).forward(&mut a))
                });
            }
        }
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(20);
    // 49-bit primes take the IFMA kernels; 60-bit ones (the bootstrapping levels) the wide
    // kernels or the scalar fallback.
    for (log_n, q, p, bits) in [
        (14u32, 8usize, 2usize, 49u32),
        (16, 25, 8, 49),
        (16, 24, 6, 60),
    ] {
        let ctx = context(log_n, q, p, bits, NttKind::Fast);
        for threads in [1usize, 2] {
            let be = CpuBackend::new(threads).expect("backend");
            let ext = Basis::qp(q, p);
            let qb = Basis::q(q);
            let host = sampler::expand_uniform(&[2; 32], &ctx, ext);
            let x = RnsPoly::<_, Coeff>::from_host(&be, &ctx, ext, &host).expect("poly");
            let xq =
                RnsPoly::<_, Coeff>::from_host(&be, &ctx, qb, &host[..q << log_n]).expect("poly");
            let xe = xq.clone().into_eval(&be, &ctx);
            let tag = format!("logN={log_n}/bits={bits}/limbs={q}+{p}/threads={threads}");
            let alpha = q.div_ceil(p);
            g.bench_function(format!("mod_up_digit/{tag}"), |b| {
                let mut out = be.alloc(ext.len() << log_n).expect("alloc");
                b.iter(|| be.mod_up(&ctx, q, 0..alpha, xq.buffer(), xe.buffer(), &mut out))
            });
            g.bench_function(format!("mod_down/{tag}"), |b| {
                let mut buf = x.buffer().clone();
                b.iter(|| be.mod_down(&ctx, q, &mut buf))
            });
            g.bench_function(format!("mul_sum_4/{tag}"), |b| {
                let mut out = be.alloc(ext.len() << log_n).expect("alloc");
                let ops: Vec<_> = (0..4).map(|_| (x.buffer(), ext)).collect();
                b.iter(|| be.mul_sum(&ctx, ext, &mut out, &ops, &ops, None, false))
            });
            g.bench_function(format!("rescale/{tag}"), |b| {
                b.iter_batched(
                    || xe.buffer().clone(),
                    |mut buf| be.rescale(&ctx, qb, &mut buf),
                    criterion::BatchSize::LargeInput,
                )
            });
            g.bench_function(format!("ntt_all_limbs/{tag}"), |b| {
                let mut buf = xq.buffer().clone();
                b.iter(|| be.ntt_forward(&ctx, qb, &mut buf))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, ntt, kernels);
criterion_main!(benches);
