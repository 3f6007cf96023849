//! Writes the CLIP-preprocessed image as tensor `pixel_values` `(3, size, size)`
//! F32 in a safetensors file, for comparing with other implementations.
//!
//! `cargo run -p fas-data --example preprocess_image -- IMAGE --output FILE.safetensors [--size 224] [--imagenet]`

use anyhow::{Context, Result};
use clap::Parser;
use fas_data::image_io::load_image;
use fas_data::{ClipTransform, Normalization};
use std::path::PathBuf;

mod common;
use common::outln;

/// CLIP's transform of one image, saved as `pixel_values` in safetensors.
///
/// --output must not be the input image (that is refused), and is written
/// atomically.
#[derive(Parser)]
#[command(name = "preprocess_image", version)]
struct Args {
    /// The image (JPEG or PNG).
    image: PathBuf,
    /// The safetensors file to write.
    #[arg(long, alias = "out")]
    output: PathBuf,
    /// Output side in pixels.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// ImageNet mean and std instead of CLIP's.
    #[arg(long)]
    imagenet: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    atomic_io::refuse_input_as_output(&args.output, &[&args.image])?;
    let transform = ClipTransform {
        size: args.size,
        normalization: if args.imagenet {
            Normalization::ImageNet
        } else {
            Normalization::Clip
        },
    };
    let tensor = transform.to_tensor(&load_image(&args.image)?)?;
    atomic_io::write_atomically(&args.output, |tmp| {
        tensor.save_safetensors("pixel_values", tmp)
    })
    .with_context(|| format!("writing {}", args.output.display()))?;
    outln!(
        "wrote pixel_values {:?} to {}",
        tensor.dims(),
        args.output.display()
    )?;
    Ok(())
}
