//! Score-file parsing under arbitrary input (seeded ChaCha8 streams): random
//! bytes and random mixes of good, bad and hostile lines never panic, finish
//! quickly, and every accepted sample is in the input exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fas_metrics::parse_score_file;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_bytes(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let n = rng.random_range(0..2_000);
    (0..n)
        .map(|_| match rng.random_range(0..6) {
            0 => b' ',
            1 => b'\n',
            2 => rng.random_range(b'0'..=b'9'),
            _ => rng.random(),
        })
        .collect()
}

/// A line and, if it is well formed, the id it names.
fn random_line(rng: &mut ChaCha8Rng, n: usize, hostile: bool) -> (String, Option<String>) {
    let id = format!("img/{n}.jpg");
    let kind = if hostile {
        rng.random_range(0..14)
    } else {
        [0, 1, 2, 3, 9, 10][rng.random_range(0..6)]
    };
    match kind {
        0 => (format!("{id} 0.{} 0", rng.random::<u16>()), Some(id)),
        1 => (format!("{id} {} 1", rng.random::<f64>()), Some(id)),
        2 => (format!("{id}\t0.5\tprint\r"), Some(id)),
        3 => (format!("{id} 0.25 live # note"), Some(id)),
        4 => (format!("{id} 0.5 live,"), None),
        5 => (format!("{id} nan 1"), None),
        6 => (format!("{id} 1e999 0"), None),
        7 => (format!("{id} 0.5 7"), None),
        8 => (format!("{id} 0.5"), None),
        9 => ("# only a comment".into(), None),
        10 => (String::new(), None),
        11 => (
            format!("{} 0.5 0", "x".repeat(rng.random_range(1..100_000))),
            None,
        ),
        12 => ("img/0.jpg 0.5 0".into(), None), // may repeat an id
        _ => (format!("{id} 0.5 0 extra"), None),
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..500 {
        let bytes = random_bytes(&mut rng);
        let text = String::from_utf8_lossy(&bytes);
        let start = Instant::now();
        let _ = parse_score_file("fuzz.txt", &text);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}

/// Accepted files hold each id once, exactly the well-formed lines; any
/// error names the file.
#[test]
fn line_mixes_accept_each_sample_once_or_fail_naming_the_file() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut accepted = 0;
    for _ in 0..400 {
        let hostile = rng.random_bool(0.5);
        let lines: Vec<(String, Option<String>)> = (0..rng.random_range(1..40))
            .map(|n| random_line(&mut rng, n, hostile))
            .collect();
        let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
        match parse_score_file("fuzz.txt", &text) {
            Ok(samples) => {
                accepted += 1;
                let mut counts: HashMap<String, usize> = HashMap::new();
                for s in &samples {
                    *counts.entry(s.id.clone().unwrap()).or_default() += 1;
                }
                assert!(counts.values().all(|&c| c == 1), "{counts:?}");
                let expected: Vec<&String> =
                    lines.iter().filter_map(|(_, id)| id.as_ref()).collect();
                let got: Vec<&String> = samples.iter().map(|s| s.id.as_ref().unwrap()).collect();
                // The repeated-id line (`img/0.jpg`) is accepted only where
                // no other line names img/0.jpg.
                let repeats = got.len() - expected.len();
                assert!(repeats <= 1, "{got:?}");
                for id in &expected {
                    assert!(got.contains(id), "{id} missing");
                }
            }
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains("fuzz.txt"), "{message}");
                assert!(message.len() < 2_000, "message of {} bytes", message.len());
            }
        }
    }
    assert!(
        accepted > 10,
        "only {accepted} files accepted: the mix is too hostile to test acceptance"
    );
}
