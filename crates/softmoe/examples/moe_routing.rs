//! Routing statistics of a Soft MoE and a La-SoftMoE layer at the paper's
//! shape (CLIP ViT-B/16 tokens: 197 x 768, 4 experts x 49 slots), on random
//! tokens: how peaked the dispatch and combine weights are, and how large the
//! output is. These are the monitoring numbers of google-research/vmoe
//! (`dispatch_weights_max_mean`, `combine_weights_{min,max}_mean`).
//!
//! `cargo run --release -p softmoe --example moe_routing` (no arguments;
//! `--help` and `--version` print their text). A closed pipe (`... | head`)
//! ends the output quietly; any other failure to write it (a full disk) is an
//! error (exit status 1).

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use softmoe::{SoftMoe, SoftMoeConfig};

/// `println!` that returns the write's outcome as [`written`] judges it;
/// call it as `outln!(...)?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        written({
            use std::io::Write as _;
            writeln!(std::io::stdout(), $($arg)*)
        })
    };
}

/// A write to standard output judged: a closed pipe (`... | head`) is no
/// error, as nobody reads the rest (the exit status stays the tool's own);
/// any other failure (a full disk) is, so that a table that was not written
/// never passes for one.
fn written(result: std::io::Result<()>) -> Result<()> {
    match result {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!(
            "cannot write the output to standard output: {error}"
        )),
        _ => Ok(()),
    }
}

/// Routing statistics of a Soft MoE and a La-SoftMoE layer at the paper's
/// shape (197 x 768 tokens, 4 experts x 49 slots) on random tokens, as a
/// markdown table.
#[derive(clap::Parser)]
#[command(name = "moe_routing", version)]
struct Args {}

fn mean_of(t: &Tensor) -> Result<f32> {
    Ok(t.mean_all()?.to_scalar::<f32>()?)
}

fn main() -> Result<()> {
    // No options: --help and --version print their text (through clap,
    // which exits 0 for them and 2 on anything else).
    let Args {} = clap::Parser::parse();
    let device = Device::Cpu;
    let tokens = Tensor::randn(0f32, 1.0, (2, 197, 768), &device)?;
    outln!("| layer | dispatch max (mean over slots) | combine min | combine max | output rms |")?;
    outln!("|---|---|---|---|---|")?;
    for (name, cfg) in [
        ("Soft MoE", SoftMoeConfig::soft_moe(768, 4, 49)),
        ("La-SoftMoE", SoftMoeConfig::la_soft_moe(768, 4, 49)),
    ] {
        let varmap = VarMap::new();
        let moe = SoftMoe::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
        let out = moe.forward_with_weights(&tokens)?;
        // (b, n, e, s): max over tokens per slot; min/max over slots per token.
        let dispatch_max = out.dispatch_weights.max(1)?;
        let combine = out.combine_weights.flatten_from(2)?;
        outln!(
            "| {name} | {:.4} | {:.4} | {:.4} | {:.4} |",
            mean_of(&dispatch_max)?,
            mean_of(&combine.min(D::Minus1)?)?,
            mean_of(&combine.max(D::Minus1)?)?,
            mean_of(&out.output.sqr()?)?.sqrt(),
        )?;
    }
    outln!(
        "(uniform dispatch would be 1/197 = {:.4}; uniform combine 1/196 = {:.4})",
        1.0 / 197.0,
        1.0 / 196.0
    )?;
    Ok(())
}
