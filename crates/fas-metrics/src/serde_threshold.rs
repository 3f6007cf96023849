//! Thresholds in JSON (`#[serde(with = "crate::serde_threshold")]`): a finite
//! threshold is a number, an infinite one the string `"inf"` or `"-inf"`.
//! JSON has no infinity, and serde_json would write `null`, which loses the
//! sign and cannot be read back into an `f64`. `f64::INFINITY` is a real
//! threshold here: the ROC curve's first point, and "nothing decided for the
//! high-score class" in [`bpcer_at_apcer`](crate::bpcer_at_apcer).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// Writes a finite threshold as a number, +-infinity as `"inf"` / `"-inf"`.
pub fn serialize<S: Serializer>(threshold: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if *threshold == f64::INFINITY {
        serializer.serialize_str("inf")
    } else if *threshold == f64::NEG_INFINITY {
        serializer.serialize_str("-inf")
    } else {
        serializer.serialize_f64(*threshold)
    }
}

/// Reads what [`serialize`] writes.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }
    match Repr::deserialize(deserializer)? {
        Repr::Number(threshold) => Ok(threshold),
        Repr::Text(text) => match text.as_str() {
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(D::Error::custom(format!(
                "threshold {other:?}: expected a number, \"inf\" or \"-inf\""
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "crate::serde_threshold")] f64);

    #[test]
    fn infinities_round_trip_as_strings() {
        for (value, json) in [
            (0.25, "0.25"),
            (f64::INFINITY, "\"inf\""),
            (f64::NEG_INFINITY, "\"-inf\""),
        ] {
            assert_eq!(serde_json::to_string(&Wrapped(value)).unwrap(), json);
            assert_eq!(
                serde_json::from_str::<Wrapped>(json).unwrap(),
                Wrapped(value)
            );
        }
        let err = serde_json::from_str::<Wrapped>("\"infinity\"").unwrap_err();
        assert!(err.to_string().contains("expected a number"), "{err}");
    }
}
