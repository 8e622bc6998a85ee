//! Precision of every evaluator operation against plaintext computation, at each ring size
//! of the test profile (toy, insecure parameters; the precision does not depend on security).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use hecnn_ckks::{ChebyshevPoly, Complex64, LinearTransform, encrypt_pk};
use hecnn_testkit::{PrecisionStats, test_log_ns, uniform_values};

fn for_each_size(f: impl Fn(u32)) {
    for log_n in test_log_ns() {
        f(log_n);
    }
}

#[test]
fn encrypt_decrypt_and_additive_ops() {
    for_each_size(|log_n| {
        let mut c = common::setup(log_n, 3, &[]);
        let x = uniform_values(1, c.slots);
        let y = uniform_values(2, c.slots);
        let (cx, cy) = (c.encrypt(&x), c.encrypt(&y));
        PrecisionStats::real(&x, &c.decrypt(&cx)).assert_at_least(
            &format!("encrypt/logN={log_n}"),
            25.0,
            28.0,
        );

        let pk = c.sk.public_key(&c.be, &mut c.rng).unwrap();
        let pt = c.encode(&x, c.params.max_level());
        let cpk = encrypt_pk(&pk, &c.be, &pt, &mut c.rng).unwrap();
        PrecisionStats::real(&x, &c.decrypt(&cpk)).assert_at_least(
            &format!("pk-encrypt/logN={log_n}"),
            22.0,
            25.0,
        );

        let e = &c.eval;
        let sum: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
        let diff: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        PrecisionStats::real(&sum, &c.decrypt(&e.add(&cx, &cy).unwrap()))
            .assert_at_least("add", 24.0, 27.0);
        PrecisionStats::real(&diff, &c.decrypt(&e.sub(&cx, &cy).unwrap()))
            .assert_at_least("sub", 24.0, 27.0);
        let neg: Vec<f64> = x.iter().map(|a| -a).collect();
        PrecisionStats::real(&neg, &c.decrypt(&e.neg(&cx))).assert_at_least("neg", 25.0, 28.0);
        let pty = c.encode(&y, c.params.max_level());
        PrecisionStats::real(&sum, &c.decrypt(&e.add_plain(&cx, &pty).unwrap())).assert_at_least(
            "add_plain",
            24.0,
            27.0,
        );
        PrecisionStats::real(&diff, &c.decrypt(&e.sub_plain(&cx, &pty).unwrap())).assert_at_least(
            "sub_plain",
            24.0,
            27.0,
        );
        let plus: Vec<f64> = x.iter().map(|a| a + 0.75).collect();
        PrecisionStats::real(&plus, &c.decrypt(&e.add_const(&cx, 0.75).unwrap())).assert_at_least(
            "add_const",
            24.0,
            27.0,
        );
        let times3: Vec<f64> = x.iter().map(|a| 3.0 * a).collect();
        PrecisionStats::real(&times3, &c.decrypt(&e.mul_int(&cx, 3).unwrap()))
            .assert_at_least("mul_int", 23.0, 26.0);
    });
}

#[test]
fn multiplicative_ops_and_rescale() {
    for_each_size(|log_n| {
        let mut c = common::setup(log_n, 4, &[]);
        let x = uniform_values(3, c.slots);
        let y = uniform_values(4, c.slots);
        let (cx, cy) = (c.encrypt(&x), c.encrypt(&y));
        let e = &c.eval;
        let prod: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * b).collect();
        let m = e.rescale(&e.mul_relin(&cx, &cy).unwrap()).unwrap();
        assert_eq!(m.level(), c.params.max_level() - 1);
        let scale_expected = c.params.default_scale().powi(2) / c.params.q_at(c.params.max_level());
        assert!((m.scale() / scale_expected - 1.0).abs() < 1e-15);
        PrecisionStats::real(&prod, &c.decrypt(&m)).assert_at_least(
            &format!("mul_relin+rescale/logN={log_n}"),
            20.0,
            23.0,
        );

        // Degree-2 ciphertexts decrypt too (before relinearization).
        let t = e.rescale(&e.mul(&cx, &cy).unwrap()).unwrap();
        PrecisionStats::real(&prod, &c.decrypt(&t)).assert_at_least("tensor", 20.0, 23.0);

        let pty = c.encode(&y, c.params.max_level());
        PrecisionStats::real(
            &prod,
            &c.decrypt(&e.rescale(&e.mul_plain(&cx, &pty).unwrap()).unwrap()),
        )
        .assert_at_least("mul_plain", 20.0, 23.0);

        let k: Vec<f64> = x.iter().map(|a| a * -1.37).collect();
        let mc = e.rescale(&e.mul_const(&cx, -1.37).unwrap()).unwrap();
        assert!(
            (mc.scale() / cx.scale() - 1.0).abs() < 1e-15,
            "mul_const + rescale keeps the scale"
        );
        PrecisionStats::real(&k, &c.decrypt(&mc)).assert_at_least("mul_const", 20.0, 23.0);

        // x²·y² at depth 2, then add x at a lower level (level matching and exact scale adjust).
        let x2 = e.rescale(&e.mul_relin(&cx, &cx).unwrap()).unwrap();
        let y2 = e.rescale(&e.mul_relin(&cy, &cy).unwrap()).unwrap();
        let x2y2 = e.rescale(&e.mul_relin(&x2, &y2).unwrap()).unwrap();
        let adj = e.adjust(&cx, x2y2.level(), x2y2.scale()).unwrap();
        let r = e.add(&x2y2, &adj).unwrap();
        let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a * a * b * b + a).collect();
        PrecisionStats::real(&want, &c.decrypt(&r)).assert_at_least("depth-2 + adjust", 18.0, 21.0);
        assert!(
            e.add(&x2y2, &cx).is_err(),
            "different scales must not add silently"
        );
    });
}

#[test]
fn inner_products_with_plaintexts_and_ciphertexts() {
    for_each_size(|log_n| {
        let mut c = common::setup(log_n, 3, &[]);
        // 40 terms: more than one lazy-reduction chunk of the backend's multiply-sum.
        let xs: Vec<Vec<f64>> = (0..40).map(|k| uniform_values(100 + k, c.slots)).collect();
        let ys: Vec<Vec<f64>> = (0..40).map(|k| uniform_values(200 + k, c.slots)).collect();
        let want: Vec<f64> = (0..c.slots)
            .map(|i| xs.iter().zip(&ys).map(|(x, y)| x[i] * y[i]).sum())
            .collect();
        let cxs: Vec<_> = xs.iter().map(|x| c.encrypt(x)).collect();
        let cys: Vec<_> = ys.iter().map(|y| c.encrypt(y)).collect();
        let pys: Vec<_> = ys
            .iter()
            .map(|y| c.encode(y, c.params.max_level()))
            .collect();
        let e = &c.eval;
        fn refs<T>(v: &[T]) -> Vec<&T> {
            v.iter().collect()
        }

        let plain = e.dot_plain(&refs(&cxs), &refs(&pys)).unwrap();
        assert_eq!(plain.degree(), 1);
        PrecisionStats::real(&want, &c.decrypt(&e.rescale(&plain).unwrap())).assert_at_least(
            &format!("dot_plain/logN={log_n}"),
            17.0,
            20.0,
        );

        let tensor = e.dot(&refs(&cxs), &refs(&cys)).unwrap();
        assert_eq!(tensor.degree(), 2);
        let relin = e.rescale(&e.relinearize(tensor).unwrap()).unwrap();
        PrecisionStats::real(&want, &c.decrypt(&relin)).assert_at_least(
            &format!("dot/logN={log_n}"),
            17.0,
            20.0,
        );

        // Mismatched inputs are errors, not panics.
        assert!(e.dot(&refs(&cxs[..2]), &refs(&cys[..1])).is_err());
        assert!(e.dot(&[], &[]).is_err());
        let squared = e.mul(&cxs[0], &cxs[1]).unwrap();
        assert!(e.dot(&[&squared], &[&cys[0]]).is_err());
        let low = c.encode(&ys[0], 0);
        assert!(e.dot_plain(&[&cxs[0]], &[&low]).is_err());
    });
}

#[test]
fn rotations_conjugation_and_sums() {
    for_each_size(|log_n| {
        let mut steps = vec![1i64, 2, 4, 8, -1, 5, 64];
        for (stride, count) in [(1, 8), (1, 5), (-2, 3)] {
            steps.extend(hecnn_ckks::inner_sum_rotations(stride, count));
        }
        let mut c = common::setup(log_n, 2, &steps);
        let n = c.slots;
        let x = uniform_values(5, n);
        let cx = c.encrypt(&x);
        let e = &c.eval;
        for k in [1i64, -1, 5, 64, 3, 13, 9] {
            let want: Vec<f64> = (0..n)
                .map(|i| x[(i as i64 + k).rem_euclid(n as i64) as usize])
                .collect();
            let got = c.decrypt(&e.rotate(&cx, k).unwrap());
            PrecisionStats::real(&want, &got).assert_at_least(
                &format!("rotate {k}/logN={log_n}"),
                22.0,
                25.0,
            );
        }
        let hoisted = e.rotate_hoisted(&cx, &[0, 1, 2, 4, 8]).unwrap();
        for (k, ct) in [0usize, 1, 2, 4, 8].iter().zip(&hoisted) {
            let want: Vec<f64> = (0..n).map(|i| x[(i + k) % n]).collect();
            PrecisionStats::real(&want, &c.decrypt(ct)).assert_at_least("hoisted", 22.0, 25.0);
        }
        // Conjugation on complex slots.
        let z: Vec<Complex64> = x
            .iter()
            .zip(uniform_values(6, n))
            .map(|(&a, b)| Complex64::new(a, b))
            .collect();
        let pt = e
            .encode(&z, c.params.max_level(), c.params.default_scale(), n)
            .unwrap();
        let cz = hecnn_ckks::encrypt_sk(&c.sk, &c.be, &pt, &mut c.rng).unwrap();
        let conj = hecnn_ckks::decrypt(&c.sk, &c.be, &e.conjugate(&cz).unwrap()).unwrap();
        let got = e.encoder().decode(&c.be, &c.params, &conj).unwrap();
        let want: Vec<Complex64> = z.iter().map(|v| v.conj()).collect();
        PrecisionStats::complex(&want, &got).assert_at_least("conjugate", 22.0, 25.0);

        // Inner sum over blocks of 8 with stride 1, and replication.
        let s = e.inner_sum(&cx, 1, 8).unwrap();
        let want: Vec<f64> = (0..n)
            .map(|i| (0..8).map(|j| x[(i + j) % n]).sum())
            .collect();
        PrecisionStats::real(&want, &c.decrypt(&s)).assert_at_least("inner_sum", 20.0, 23.0);
        let s5 = e.inner_sum(&cx, 1, 5).unwrap();
        let want5: Vec<f64> = (0..n)
            .map(|i| (0..5).map(|j| x[(i + j) % n]).sum())
            .collect();
        PrecisionStats::real(&want5, &c.decrypt(&s5)).assert_at_least("inner_sum 5", 20.0, 23.0);
        let r = e.replicate(&cx, 2, 3).unwrap();
        let wantr: Vec<f64> = (0..n)
            .map(|i| (0..3).map(|j| x[(i + n - 2 * j) % n]).sum())
            .collect();
        PrecisionStats::real(&wantr, &c.decrypt(&r)).assert_at_least("replicate", 20.0, 23.0);
    });
}

#[test]
fn sparse_slots_rotate_within_the_block() {
    let steps = [1i64, 3];
    let mut c = common::setup(10, 2, &steps);
    let slots = 64;
    let x = uniform_values(7, slots);
    let pt = c
        .eval
        .encode_real(&x, 2, c.params.default_scale(), slots)
        .unwrap();
    let ct = hecnn_ckks::encrypt_sk(&c.sk, &c.be, &pt, &mut c.rng).unwrap();
    let r = c.eval.rotate(&ct, 3).unwrap();
    let pt = hecnn_ckks::decrypt(&c.sk, &c.be, &r).unwrap();
    let got = c.eval.encoder().decode_real(&c.be, &c.params, &pt).unwrap();
    let want: Vec<f64> = (0..slots).map(|i| x[(i + 3) % slots]).collect();
    PrecisionStats::real(&want, &got).assert_at_least("sparse rotate", 22.0, 25.0);
}

#[test]
fn bsgs_matrix_vector() {
    for_each_size(|log_n| {
        let n = 1usize << (log_n - 1);
        // A banded matrix with 24 diagonals spread out, plus dense rows for a small block.
        let mut m = vec![vec![0.0; n]; n];
        let vals = uniform_values(8, n * 24);
        for (d, k) in [
            0usize, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 100, 127, 200, 255, 300, 333, 400, 401, 402,
            450, 480, 500, 511,
        ]
        .iter()
        .enumerate()
        {
            if *k >= n {
                continue;
            }
            for i in 0..n {
                m[i][(i + k) % n] = vals[d * n + i] / 4.0;
            }
        }
        let diags = hecnn_ckks::diagonals_of(&m).unwrap();
        let rots: Vec<i64> = hecnn_ckks::bsgs_rotations(&diags.keys().copied().collect(), n)
            .into_iter()
            .collect();
        let mut c = common::setup(log_n, 2, &rots);
        let lt = LinearTransform::new(&c.eval, &diags, n, 2).unwrap();
        assert_eq!(lt.rotations().into_iter().collect::<Vec<_>>(), rots);
        let x = uniform_values(9, n);
        let cx = c.encrypt(&x);
        let out = c.eval.linear_transform(&cx, &lt).unwrap();
        assert_eq!(out.level(), 1);
        assert!((out.scale() / cx.scale() - 1.0).abs() < 1e-15);
        let want: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| m[i][j] * x[j]).sum())
            .collect();
        PrecisionStats::real(&want, &c.decrypt(&out)).assert_at_least(
            &format!("bsgs/logN={log_n}"),
            19.0,
            22.0,
        );
        // Deferred diagonals (encoded while the transform runs, in one chunk or one giant
        // step at a time) give the very same ciphertext: the sums are exact modular ones.
        // One diagonal complex, the rest kept as reals.
        let mut cdiags = diags.clone();
        if let Some(d) = cdiags.values_mut().nth(3) {
            d.iter_mut().for_each(|z| *z *= Complex64::new(0.0, 1.0));
        }
        let blocks = hecnn_ckks::BlockDiagonals::from([((0, 0), cdiags)]);
        let scale = c.params.q_at(2);
        let eager = LinearTransform::blocks(&c.eval, &blocks, (1, 1), n, 2, scale).unwrap();
        let want = c.eval.linear_transform(&cx, &eager).unwrap();
        let want = hecnn_ckks::decrypt(&c.sk, &c.be, &want).unwrap();
        let want = c.eval.encoder().decode(&c.be, &c.params, &want).unwrap();
        assert!(!eager.is_deferred());
        for chunk in [None, Some(1)] {
            let mut lt =
                LinearTransform::deferred(&c.eval, blocks.clone(), (1, 1), n, 2, scale).unwrap();
            if let Some(bytes) = chunk {
                lt = lt.with_chunk_bytes(bytes);
            }
            assert!(lt.is_deferred());
            assert_eq!(lt.rotations(), eager.rotations());
            assert_eq!(lt.diagonal_count(), eager.diagonal_count());
            let got = c.eval.linear_transform(&cx, &lt).unwrap();
            let got = hecnn_ckks::decrypt(&c.sk, &c.be, &got).unwrap();
            let got = c.eval.encoder().decode(&c.be, &c.params, &got).unwrap();
            assert_eq!(got, want, "deferred, chunk {chunk:?}, logN={log_n}");
        }

        // A block transform without inputs or outputs is refused, not run on nothing.
        let empty = hecnn_ckks::BlockDiagonals::new();
        for shape in [(0, 0), (1, 0), (0, 1)] {
            assert!(matches!(
                LinearTransform::blocks(&c.eval, &empty, shape, n, 2, 2f64.powi(40)),
                Err(hecnn_ckks::CkksError::InvalidArgument { what }) if what.contains("at least one")
            ));
        }
    });
}

#[test]
fn chebyshev_evaluation() {
    for_each_size(|log_n| {
        let mut c = common::setup(log_n, 8, &[]);
        let x = uniform_values(10, c.slots);
        let cx = c.encrypt(&x);
        // Degree-15 approximation of a smooth function on [-1, 1] (depth 4) ...
        let p =
            ChebyshevPoly::interpolate(|t| (2.0 * t).sin() / (1.0 + t * t), 15, -1.0, 1.0).unwrap();
        assert_eq!(p.depth(), 4);
        let out = c.eval.evaluate_chebyshev(&cx, &p, None).unwrap();
        assert_eq!(out.level(), c.params.max_level() - 4);
        assert!(
            (out.scale() / cx.scale() - 1.0).abs() < 1e-12,
            "scale is exact"
        );
        let want: Vec<f64> = x.iter().map(|&t| p.eval(t)).collect();
        PrecisionStats::real(&want, &c.decrypt(&out)).assert_at_least(
            &format!("chebyshev-15/logN={log_n}"),
            16.0,
            19.0,
        );
        // ... and a degree-27 polynomial on [-4, 4] (interval change: one more level).
        let q = ChebyshevPoly::interpolate(|t| (t / 2.0).tanh(), 27, -4.0, 4.0).unwrap();
        assert_eq!(q.depth(), 6);
        let x4: Vec<f64> = x.iter().map(|v| 4.0 * v).collect();
        let cx4 = c.encrypt(&x4);
        let out = c.eval.evaluate_chebyshev(&cx4, &q, None).unwrap();
        assert_eq!(out.level(), c.params.max_level() - 6);
        let want: Vec<f64> = x4.iter().map(|&t| q.eval(t)).collect();
        PrecisionStats::real(&want, &c.decrypt(&out)).assert_at_least("chebyshev-27", 15.0, 18.0);
    });
}
