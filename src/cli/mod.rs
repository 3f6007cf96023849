//! The command lines of `train_uniattack`, `eval_uniattack` and `detect`
//! (clap derive; the examples only parse and call in here), and the value
//! parsers they share so the same thing has the same flag and spelling in
//! every tool.

pub mod detect;
pub mod eval;
pub mod train;

use clip_moe::{MoeKind, MoeLayers, PromptTemplate};

/// How a scoring tool (`eval_uniattack`, `detect`) runs: batch, threads, device.
#[derive(Debug, Clone, clap::Args)]
pub struct RunFlags {
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Decoding threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// cpu, cuda or cuda:N [default: the first GPU if built with cuda, else cpu].
    #[arg(long)]
    pub device: Option<String>,
}
use fas_data::protocol::uniattack::Protocol;

/// `p1`, `p1.1`, ..., `p2.2`.
pub fn parse_protocol(text: &str) -> Result<Protocol, String> {
    Protocol::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
        format!(
            "unknown protocol {text:?}; expected one of {}",
            names.join(", ")
        )
    })
}

/// `T-1` ... `T-8` (or `T1`, `t8`): the paper's Table 4 templates.
pub fn parse_template(text: &str) -> Result<PromptTemplate, String> {
    let digits = text
        .strip_prefix(['T', 't'])
        .map(|rest| rest.strip_prefix('-').unwrap_or(rest));
    match digits.and_then(|d| d.parse::<usize>().ok()) {
        Some(n @ 1..=8) => Ok(PromptTemplate::ALL[n - 1]),
        _ => Err(format!(
            "unknown prompt template {text:?}; expected T-1 ... T-8"
        )),
    }
}

/// `none`, `soft` or `la`.
pub fn parse_moe_kind(text: &str) -> Result<MoeKind, String> {
    match text {
        "none" => Ok(MoeKind::None),
        "soft" => Ok(MoeKind::SoftMoe),
        "la" => Ok(MoeKind::LaSoftMoe),
        other => Err(format!(
            "unknown MoE kind {other:?}; expected none, soft or la"
        )),
    }
}

/// `all`, `last:K` or a comma-separated list of 0-based blocks (`0,5,11`).
pub fn parse_moe_layers(text: &str) -> Result<MoeLayers, String> {
    if text == "all" {
        return Ok(MoeLayers::All);
    }
    if let Some(k) = text.strip_prefix("last:") {
        return k
            .parse()
            .map(MoeLayers::Last)
            .map_err(|_| format!("last:K needs a block count, got {text:?}"));
    }
    text.split(',')
        .map(|i| i.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map(MoeLayers::List)
        .map_err(|_| format!("expected all, last:K or blocks like 0,5,11; got {text:?}"))
}

/// A threshold on the detector's probabilities: finite and in [0, 1] (a
/// NaN would decide nothing, and 50 is a percentage typed by mistake).
pub(crate) fn parse_probability(text: &str) -> std::result::Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number in [0, 1], got {text:?}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "a threshold on P(attack) must be in [0, 1], got {text}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_explain() {
        assert_eq!(parse_protocol("p2.1"), Ok(Protocol::P2_1));
        assert!(parse_protocol("p3").unwrap_err().contains("p1.1"));
        assert_eq!(parse_template("T-8"), Ok(PromptTemplate::T8));
        assert_eq!(parse_template("t3"), Ok(PromptTemplate::T3));
        assert!(parse_template("T-9").is_err());
        assert_eq!(parse_moe_kind("la"), Ok(MoeKind::LaSoftMoe));
        assert_eq!(parse_moe_layers("last:4"), Ok(MoeLayers::Last(4)));
        assert_eq!(
            parse_moe_layers("0, 5,11"),
            Ok(MoeLayers::List(vec![0, 5, 11]))
        );
        assert!(parse_moe_layers("x").is_err());
    }
}
