//! Routing statistics of a Soft MoE and a La-SoftMoE layer at the paper's
//! shape (CLIP ViT-B/16 tokens: 197 x 768, 4 experts x 49 slots), on random
//! tokens: how peaked the dispatch and combine weights are, and how large the
//! output is. These are the monitoring numbers of google-research/vmoe
//! (`dispatch_weights_max_mean`, `combine_weights_{min,max}_mean`).
//!
//! `cargo run --release -p softmoe --example moe_routing`

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use softmoe::{SoftMoe, SoftMoeConfig};

/// `println!` that stops quietly on a closed stdout (`... | head`) instead
/// of panicking; the exit status stays the tool's own.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn mean_of(t: &Tensor) -> Result<f32> {
    Ok(t.mean_all()?.to_scalar::<f32>()?)
}

fn main() -> Result<()> {
    // No options: anything given (`--help` included) gets the usage, not a
    // run that ignores it.
    if std::env::args_os().len() > 1 {
        eprintln!("usage: moe_routing (no arguments; see the file's doc comment)");
        std::process::exit(2);
    }
    let device = Device::Cpu;
    let tokens = Tensor::randn(0f32, 1.0, (2, 197, 768), &device)?;
    outln!("| layer | dispatch max (mean over slots) | combine min | combine max | output rms |");
    outln!("|---|---|---|---|---|");
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
        );
    }
    outln!(
        "(uniform dispatch would be 1/197 = {:.4}; uniform combine 1/196 = {:.4})",
        1.0 / 197.0,
        1.0 / 196.0
    );
    Ok(())
}
