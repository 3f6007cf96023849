//! Writes the CLIP-preprocessed image as tensor `pixel_values` `(3, size, size)`
//! F32 in a safetensors file, for comparing with other implementations.
//!
//! `cargo run -p fas-data --example preprocess_image -- IMAGE --out FILE.safetensors [--size 224] [--imagenet]`

use anyhow::{anyhow, bail, Context, Result};
use fas_data::image_io::load_image;
use fas_data::{ClipTransform, Normalization};
use std::ffi::OsString;
use std::path::PathBuf;

fn main() -> Result<()> {
    let (mut image, mut out) = (None, None);
    let mut transform = ClipTransform::default();
    let mut args = std::env::args_os().skip(1);
    while let Some(raw) = args.next() {
        let arg = raw.to_string_lossy().into_owned();
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--size" => {
                transform.size = text(value()?)?
                    .parse()
                    .context("--size takes a number of pixels")?
            }
            "--imagenet" => transform.normalization = Normalization::ImageNet,
            flag if flag.starts_with("--") => bail!("unknown flag {flag}"),
            _ => image = Some(PathBuf::from(raw)),
        }
    }
    let image = image.context(
        "usage: preprocess_image IMAGE --out FILE.safetensors [--size 224] [--imagenet]",
    )?;
    let out = out.context("--out FILE.safetensors is required")?;
    let tensor = transform.to_tensor(&load_image(&image)?)?;
    tensor.save_safetensors("pixel_values", &out)?;
    println!(
        "wrote pixel_values {:?} to {}",
        tensor.dims(),
        out.display()
    );
    Ok(())
}

/// An argument as UTF-8 text (paths stay `OsString`s and need not be UTF-8).
fn text(arg: OsString) -> Result<String> {
    arg.into_string()
        .map_err(|a| anyhow!("argument {} is not valid UTF-8", a.to_string_lossy()))
}
