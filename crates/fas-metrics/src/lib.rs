//! Face anti-spoofing metrics: APCER, BPCER, ACER, HTER, ACC, AUC, EER, ROC.
//!
//! Not implemented yet: this crate is reserved for the metrics (issue
//! "fas-metrics"). Plain Rust, no candle.
