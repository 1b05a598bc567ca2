//! `iam-bench`: token verification and login throughput on one thread, each next to its
//! anchor run in the same process, reported as ratios.
//!
//! - token verification (parse the JWT, strict Ed25519 check, claims and expiry) vs a raw
//!   `ed25519-dalek` `verify_strict` over a message of the same length;
//! - login's CPU work (argon2id verification of the stored hash + signing a token) vs a plain
//!   argon2id hash at the same parameters (m = 19456 KiB, t = 2, p = 1).
//!
//! Anchor and ours alternate in rounds, so load changes on a shared machine hit both; the
//! ratio reported is the median of the per-round ratios.
//!
//! Run: `taskset -c 1 cargo run --release -p iam --bin iam-bench -- [SECONDS_PER_CASE]`.

use ed25519_dalek::{Signer as _, SigningKey};
use iam::password;
use iam::token::{self, TokenSigner};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Rounds per case.
const ROUNDS: u32 = 5;

/// Runs `f` repeatedly for at least `budget` (and at least 3 times); returns ops per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut n = 0u64;
    while n < 3 || start.elapsed() < budget {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Runs `case` (which returns `(ours, anchor)` ops/s) in [`ROUNDS`] rounds sharing `budget`;
/// returns the median ours, median anchor and median per-round ratio.
fn rounds(budget: Duration, mut case: impl FnMut(Duration) -> (f64, f64)) -> (f64, f64, f64) {
    let per = budget / ROUNDS / 2;
    let runs: Vec<(f64, f64)> = (0..ROUNDS).map(|_| case(per)).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
        median(runs.iter().map(|r| r.0 / r.1).collect()),
    )
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10.0);
    let budget = Duration::from_secs_f64(secs);

    // Token verification vs raw Ed25519 over a message as long as the token's signing input.
    let signer = TokenSigner::generate();
    let vk = signer.verifying_key();
    let now = iam::model::now_unix();
    let (tok, _) = signer.issue("admin", now, 3600)?;
    let raw_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let raw_vk = raw_key.verifying_key();
    let msg = vec![b'x'; tok.rsplit_once('.').map_or(0, |(input, _)| input.len())];
    let sig = raw_key.sign(&msg);
    let verify = rounds(budget, |b| {
        let anchor = rate(b, || {
            black_box(raw_vk.verify_strict(black_box(&msg), &sig)).ok();
        });
        let ours = rate(b, || {
            let claims = token::parse(black_box(&tok)).and_then(|u| u.verify(&vk, now));
            black_box(claims).ok();
        });
        (ours, anchor)
    });

    // Login's CPU path vs a plain argon2id hash at the same parameters.
    let stored = password::hash_blocking("correct horse battery")?;
    let login = rounds(budget, |b| {
        let anchor = rate(b, || {
            black_box(password::hash_blocking(black_box("correct horse battery"))).ok();
        });
        let ours = rate(b, || {
            let ok = password::verify_blocking("correct horse battery", &stored).unwrap_or(false);
            assert!(ok, "the stored hash must verify");
            black_box(signer.issue("admin", now, 3600)).ok();
        });
        (ours, anchor)
    });

    println!(
        "iam-bench: one thread, {secs} s per case in {ROUNDS} alternating rounds, token {} bytes",
        tok.len()
    );
    println!(
        "{:<48} {:>10} {:>12} {:>7}",
        "case", "ops/s", "anchor ops/s", "ratio"
    );
    for (name, (ours, anchor, ratio)) in [
        ("token verify vs raw ed25519 verify_strict", verify),
        ("login (argon2id verify + sign) vs argon2id hash", login),
    ] {
        println!("{name:<48} {ours:>10.1} {anchor:>12.1} {ratio:>7.3}");
    }
    Ok(())
}
