//! Zero-shot image-text matching with a CLIP (or fine-tuned CLIP-MoE) model.
//!
//! ```text
//! cargo run --release -p clip-moe --example zero_shot -- \
//!     --model DIR_OR_HUB_ID --image a.png [--image b.jpg ...] \
//!     --text "a photo of a cat" [--text ...] [--json]
//! ```
//!
//! `--model` is a directory holding `config.json`, `model.safetensors` and
//! `tokenizer.json`, or a hub id (default `openai/clip-vit-base-patch16`;
//! `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE=1` are honoured). Images go
//! through CLIP's own transform (`fas-data`'s `ClipTransform`) at the
//! config's image size. Prints the softmax over the texts for every image,
//! or with `--json` one object: `image_embeds`, `text_embeds` (L2-normalised,
//! one row per input, in input order), `logits_per_image` (images x texts,
//! scaled by the model's logit scale) and `probs` (softmax over texts).
//! A closed pipe (`... | head`) ends the output quietly; any other failure
//! to write it (a full disk) is an error (exit status 1).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Parser;
use clip_moe::hub::{resolve, HubOptions, DEFAULT_MODEL_ID};
use clip_moe::{load_model, ClipConfig, ClipTokenizer};
use fas_data::image_io::load_image;
use fas_data::ClipTransform;

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

/// Zero-shot image-text matching: the softmax over the texts for every image.
#[derive(Parser)]
#[command(name = "zero_shot", version)]
struct Args {
    /// A directory with config.json, the weights and tokenizer.json, or a hub id.
    #[arg(long, default_value = DEFAULT_MODEL_ID)]
    model: String,
    /// An image (repeat for several).
    #[arg(long = "image", required = true)]
    images: Vec<PathBuf>,
    /// A text (repeat for several); texts longer than the context are truncated.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Widest column of the table, in characters; longer texts are shortened.
const COLUMN: usize = 32;

/// `text` cut to [`COLUMN`] characters (with an ellipsis), one line.
fn cell(text: &str) -> String {
    let flat = text.replace(['\n', '\r', '\t'], " ");
    if flat.chars().count() <= COLUMN {
        flat
    } else {
        let mut short: String = flat.chars().take(COLUMN - 1).collect();
        short.push('…');
        short
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = Device::Cpu;
    let files = resolve(&args.model, &HubOptions::from_env())?;
    let cfg = ClipConfig::from_file(&files.config)?;
    let model = load_model(&cfg, &files.weights, &device, true)?.model;
    let tokenizer =
        ClipTokenizer::from_file(&files.tokenizer, cfg.text_config.max_position_embeddings)?;

    let transform = ClipTransform {
        size: cfg.vision_config.image_size as u32,
        ..ClipTransform::default()
    };
    let pixels = args
        .images
        .iter()
        .map(|path| Ok(transform.to_tensor(&load_image(path)?)?))
        .collect::<Result<Vec<Tensor>>>()?;
    let pixels = Tensor::stack(&pixels, 0)?.to_device(&device)?;
    let text = tokenizer.encode(&args.texts, &device)?;

    let out = model.forward(&pixels, &text)?;
    let probs = candle_nn::ops::softmax(&out.logits_per_image, 1)?;
    let probs_rows = probs.to_vec2::<f32>()?;

    if args.json {
        let json = serde_json::json!({
            "image_embeds": out.image_embeds.to_vec2::<f32>()?,
            "text_embeds": out.text_embeds.to_vec2::<f32>()?,
            "logits_per_image": out.logits_per_image.to_vec2::<f32>()?,
            "probs": probs_rows,
        });
        return outln!("{json}");
    }
    let headers: Vec<String> = args.texts.iter().map(|t| cell(t)).collect();
    let width = headers
        .iter()
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut line = format!("{:<24}", "image \\ text");
    for t in &headers {
        line += &format!("  {t:>width$}");
    }
    outln!("{line}")?;
    for (path, row) in args.images.iter().zip(&probs_rows) {
        let name = path
            .file_name()
            .map(|n| cell(&n.to_string_lossy()))
            .unwrap_or_default();
        let mut line = format!("{name:<24}");
        for p in row {
            line += &format!("  {p:>width$.4}");
        }
        outln!("{line}")?;
    }
    Ok(())
}
