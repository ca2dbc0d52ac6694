//! How long one `Users::verify` takes for a user in the file and for a name that is not, with
//! the default argon2id parameters `tcp-reactor passwd` uses. The two medians should be
//! close: an unknown name is verified against a dummy hash so timing does not reveal which
//! names exist.
//!
//! ```text
//! cargo run --release --example argon2_timing [RUNS]      # RUNS defaults to 20
//! ```
//!
//! A measurement, not a test: nothing is asserted, since a shared machine is noisy.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tcp_reactor::auth::{Users, hash_line};

fn main() -> ExitCode {
    let runs = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: argon2_timing [RUNS]   (RUNS >= 1, default 20)");
            return ExitCode::from(2);
        }
    };
    let made = hash_line("alice", b"correct horse")
        .and_then(|line| Users::parse(&line).map_err(|e| e.to_string()));
    let users = match made {
        Ok(users) => users,
        Err(e) => {
            eprintln!("argon2_timing: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Interleave the cases so drift in machine load affects both alike; one warm-up each.
    users.verify(b"alice", b"correct horse");
    users.verify(b"nobody", b"correct horse");
    let cases: [(&str, &[u8], &[u8]); 3] = [
        ("known user, right password", b"alice", b"correct horse"),
        ("known user, wrong password", b"alice", b"wrong horse"),
        ("unknown user", b"nobody", b"correct horse"),
    ];
    let mut times = vec![Vec::with_capacity(runs); cases.len()];
    for _ in 0..runs {
        for ((_, name, password), samples) in cases.iter().zip(&mut times) {
            let start = Instant::now();
            std::hint::black_box(users.verify(name, password));
            samples.push(start.elapsed());
        }
    }
    let params = argon2::Params::default();
    println!(
        "Users::verify, argon2id m={} KiB t={} p={}, {runs} runs each",
        params.m_cost(),
        params.t_cost(),
        params.p_cost()
    );
    for ((label, _, _), samples) in cases.iter().zip(&mut times) {
        samples.sort_unstable();
        println!(
            "{label:<28} median {:>7.2} ms   min {:>7.2} ms   max {:>7.2} ms",
            ms(samples[samples.len() / 2]),
            ms(samples[0]),
            ms(samples[samples.len() - 1]),
        );
    }
    ExitCode::SUCCESS
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
