//! BFV operations of fhe.rs (the `fhe` crate), timed with the parameters of hecnn's BFV
//! presets: one JSON line per operation on stdout (schema of bench/peers/bfv_side_by_side.sh),
//! notes on stderr.
//!
//! ```text
//! cargo run --release --manifest-path bench/peers/fhers-bfv/Cargo.toml -- --log-n 13 --reps 10
//! ```
//!
//! Parameters: N = 2^log_n, t = 65537, ciphertext moduli = hecnn's Q primes by size
//! (3 × 54 bits at log N 13, 6 × 54 at log N 14). fhe.rs has no special primes: its key
//! switching decomposes over the ciphertext primes themselves (one digit per prime), so
//! hecnn's P primes have no counterpart and log Q (not log QP) is what matches.
//! fhe.rs is single-threaded: `--threads` is recorded only.

use std::time::Instant;

use fhe::bfv::{
    BfvParametersBuilder, Ciphertext, Encoding, EvaluationKeyBuilder, Plaintext, PublicKey,
    RelinearizationKey, SecretKey,
};
use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter};

const T: u64 = 65537;

fn median_min(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// `reps` timed calls after one untimed warm-up, in ms.
fn time_ms<R>(reps: usize, mut f: impl FnMut() -> R) -> Vec<f64> {
    drop(f());
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            let r = f();
            let e = s.elapsed().as_secs_f64() * 1e3;
            drop(r);
            e
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut log_n = 13u32;
    let mut threads = 1usize;
    let mut reps = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--log-n" => log_n = val()?.parse()?,
            "--threads" => threads = val()?.parse()?,
            "--reps" => reps = val()?.parse()?,
            "-h" | "--help" => {
                println!("usage: fhers-bfv-peer [--log-n 13|14] [--threads T] [--reps R]");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    let q_sizes: Vec<usize> = match log_n {
        13 => vec![54; 3],
        14 => vec![54; 6],
        _ => return Err("--log-n must be 13 or 14 (hecnn's N13/N14 presets)".into()),
    };
    if reps == 0 {
        return Err("--reps must be >= 1".into());
    }
    if threads != 1 {
        eprintln!("[note] fhe.rs is single-threaded; --threads {threads} is only recorded");
    }
    let n = 1usize << log_n;
    let params = BfvParametersBuilder::new()
        .set_degree(n)
        .set_plaintext_modulus(T)
        .set_moduli_sizes(&q_sizes)
        .build_arc()?;
    let log_q: f64 = params.moduli().iter().map(|&q| (q as f64).log2()).sum();

    let mut rng = rand::rng();
    let sk = SecretKey::random(&params, &mut rng);
    let pk = PublicKey::new(&sk, &mut rng);
    let rk = RelinearizationKey::new(&sk, &mut rng)?;
    // fhe.rs's "column rotation by 1" is the rotation of each row of the 2 × N/2 slot
    // matrix by one column (Galois element 3): hecnn's rotate_rows(1), SEAL's rotate_rows(1).
    let ek = EvaluationKeyBuilder::new(&sk)?
        .enable_column_rotation(1)?
        .build(&mut rng)?;

    let x: Vec<u64> = (0..n as u64).map(|i| i % T).collect();
    let y: Vec<u64> = (0..n as u64).map(|i| (3 * i + 1) % T).collect();
    let pt_x = Plaintext::try_encode(&x, Encoding::simd(), &params)?;
    let pt_y = Plaintext::try_encode(&y, Encoding::simd(), &params)?;
    let ct_x: Ciphertext = pk.try_encrypt(&pt_x, &mut rng)?;
    let ct_y: Ciphertext = pk.try_encrypt(&pt_y, &mut rng)?;
    let decode = |ct: &Ciphertext| -> Vec<u64> {
        let pt = sk.try_decrypt(ct).expect("decrypt");
        Vec::<u64>::try_decode(&pt, Encoding::simd()).expect("decode")
    };

    let library = format!(
        "fhe.rs(fhe 0.1.1{})",
        if cfg!(feature = "tfhe-ntt") {
            ", tfhe-ntt"
        } else {
            ""
        }
    );
    let emit = |op: &str, samples: Vec<f64>, variant: &str| {
        let reps = samples.len();
        let (ms, min_ms) = median_min(samples);
        println!(
            "{{\"library\": \"{library}\", \"op\": \"{op}\", \"variant\": \"{variant}\", \
             \"log_n\": {log_n}, \"t\": {T}, \"log_q\": {log_q:.1}, \"q_limbs\": {}, \
             \"p_limbs\": 0, \"threads\": {threads}, \"threads_applied\": false, \
             \"ms\": {ms:.4}, \"min_ms\": {min_ms:.4}, \"reps\": {reps}}}",
            q_sizes.len()
        );
    };

    // encrypt (public key)
    let s = time_ms(reps, || pk.try_encrypt(&pt_x, &mut rng).expect("encrypt"));
    emit("encrypt", s, "public key");
    // decrypt (no decode)
    let s = time_ms(reps, || sk.try_decrypt(&ct_x).expect("decrypt"));
    emit("decrypt", s, "no decode");
    // ciphertext × pre-encoded plaintext (fhe.rs keeps ciphertexts and the plaintext's
    // NTT form, so this is a pointwise product on a copy of the ciphertext)
    let s = time_ms(reps, || &ct_x * &pt_y);
    let got = decode(&(&ct_x * &pt_y));
    assert!(
        got.iter().enumerate().all(|(i, &v)| v == x[i] * y[i] % T),
        "mul_plain check"
    );
    emit("mul_plain", s, "pre-encoded plaintext");
    // ciphertext × ciphertext, then relinearize
    let s = time_ms(reps, || {
        let mut p = &ct_x * &ct_y;
        rk.relinearizes(&mut p).expect("relin");
        p
    });
    let mut p = &ct_x * &ct_y;
    rk.relinearizes(&mut p)?;
    let got = decode(&p);
    assert!(
        got.iter().enumerate().all(|(i, &v)| v == x[i] * y[i] % T),
        "mul_relin check"
    );
    emit("mul_relin", s, "mul + relinearize");
    // rotate rows by one column
    let s = time_ms(reps, || ek.rotates_columns_by(&ct_x, 1).expect("rotate"));
    let got = decode(&ek.rotates_columns_by(&ct_x, 1)?);
    let half = n / 2;
    assert!(
        (0..n).all(|i| got[i] == x[(i / half) * half + (i % half + 1) % half]),
        "rotate check"
    );
    emit("rotate", s, "rows by 1 column");
    eprintln!("[note] fhe.rs: results checked (mul_plain, mul_relin, rotate)");
    Ok(())
}
