//! Checking that listed files exist (or decode), on all cores.

use crate::image_io::read_and_verify;
use crate::sample::{Media, Sample};
use crate::video::list_frames;

/// Checks one sample: the file (or a frame directory with at least one
/// frame) exists, and with `decode` every image decodes and passes
/// [`crate::image_io::verify_image`].
fn check_sample(sample: &Sample, decode: bool) -> std::result::Result<(), String> {
    let images = match sample.media {
        Media::Image => vec![sample.path.clone()],
        Media::FrameDir(names) => list_frames(&sample.path, names).map_err(|e| e.to_string())?,
    };
    for image in images {
        if !decode {
            // Links followed; what is there instead of a file says more
            // than "not found" (a directory, a FIFO, a link loop).
            match std::fs::metadata(&image) {
                Ok(meta) if meta.is_file() => continue,
                Ok(meta) if meta.is_dir() => {
                    return Err("a directory, not an image file".to_string())
                }
                Ok(_) => {
                    return Err("not a regular file (a FIFO, a device or a socket)".to_string())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err("file not found".to_string())
                }
                Err(e) => return Err(format!("cannot read: {e}")),
            }
        }
        read_and_verify(&image).map_err(|m| {
            if image == sample.path {
                m
            } else {
                format!("frame {}: {m}", image.display())
            }
        })?;
    }
    Ok(())
}

/// Checks every sample, in parallel over the available cores; verdicts in sample order.
pub(crate) fn check_samples(
    samples: &[Sample],
    decode: bool,
) -> Vec<std::result::Result<(), String>> {
    let threads = if decode {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    };
    let chunk = samples.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                let handle = scope.spawn(move || {
                    // Per image: a decoder panic is that image's problem,
                    // not its whole share of the dataset's.
                    part.iter()
                        .map(|s| {
                            std::panic::catch_unwind(|| check_sample(s, decode)).unwrap_or_else(
                                |_| Err("the image decoder panicked on this file".to_string()),
                            )
                        })
                        .collect::<Vec<_>>()
                });
                (part.len(), handle)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(len, handle)| {
                handle
                    .join()
                    .unwrap_or_else(|_| vec![Err("the image decoder panicked".to_string()); len])
            })
            .collect()
    })
}
