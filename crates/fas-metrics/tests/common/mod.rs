//! Helpers shared by the integration tests that compare with the generator's
//! fixtures (scripts/fas_metrics/gen_fixtures.py).

use fas_metrics::AttackTypeRate;
use serde::Deserialize;

/// Absolute tolerance against the NumPy/scikit-learn reference values.
pub const TOLERANCE: f64 = 1e-12;

/// Per-attack-type APCER as the generator writes it (untyped = "attack").
#[derive(Deserialize)]
pub struct TypeRate {
    pub attack_type: String,
    pub attacks: usize,
    pub accepted: usize,
    pub apcer: f64,
}

/// `actual` within [`TOLERANCE`] of `expected`.
pub fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= TOLERANCE,
        "{what}: got {actual:e}, reference {expected:e}"
    );
}

/// The crate's per-type table equals the reference's, type by type, in order.
pub fn check_type_rates(got: &[AttackTypeRate], expected: &[TypeRate], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: attack types");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(
            g.attack_type.as_deref().unwrap_or("attack"),
            e.attack_type,
            "{what}"
        );
        assert_eq!(
            (g.attacks, g.accepted),
            (e.attacks, e.accepted),
            "{what} {}",
            e.attack_type
        );
        close(g.apcer, e.apcer, &format!("{what} {}", e.attack_type));
    }
}
