//! Training losses over image-text logits.
//!
//! * [`clip_loss`]: the paper's eq. 1, CLIP's symmetric InfoNCE over an
//!   `N x N` similarity matrix whose diagonal holds the matching pairs.
//! * [`clip_loss_with_prompts`]: eq. 1 as the paper applies it to face
//!   anti-spoofing: text `j` is the class prompt of image `j`, so
//!   `S_ij = logits[i, label_j]`.
//! * [`prompt_cross_entropy`]: the two-prompt cross-entropy of CLIP-based FAS
//!   code (e.g. FLIP, CLIP zero-shot heads): softmax over the class prompts
//!   for each image.
//!
//! How the two differ when many images share a prompt (always, with two
//! prompts): write `l_ic` for image `i`'s logit with class `c` and `n_c` for
//! the number of batch images of class `c`. The image-side half of eq. 1 is
//! `-l_{i,y_i} + log Σ_c n_c exp(l_ic)`: a cross-entropy whose logits are
//! offset by `log n_c`, bounded below by `log n_{y_i}` instead of 0, so the
//! batch's class balance acts as a prior. The text-side half, for column `j`,
//! is a softmax over *images*: it asks image `j` to match its class prompt
//! better than every other image does, including images of the same class,
//! a ranking among same-class images that no label asks for. The prompt
//! cross-entropy has neither effect: each image only compares its two
//! prompts. With distinct texts per image (captions) both halves of eq. 1 are
//! CLIP's pre-training objective.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// The paper's eq. 1: `(CE(S, diag) + CE(Sᵀ, diag)) / 2` for a square
/// `(N, N)` matrix of logits whose `i`-th image matches the `i`-th text.
pub fn clip_loss(logits_per_image: &Tensor) -> Result<Tensor> {
    let n = match logits_per_image.dims() {
        &[rows, cols] if rows == cols && rows > 0 => rows,
        dims => {
            return Err(Error::invalid_input(
                "logits_per_image",
                format!("expected a square (N, N) matrix, got {dims:?}"),
            ))
        }
    };
    let targets = Tensor::arange(0u32, n as u32, logits_per_image.device())?;
    let per_image = candle_nn::loss::cross_entropy(logits_per_image, &targets)?;
    let per_text = candle_nn::loss::cross_entropy(&logits_per_image.t()?, &targets)?;
    Ok(((per_image + per_text)? / 2.0)?)
}

/// Eq. 1 with the class prompt of each image as its text: `logits` are
/// `(N, classes)` image-prompt logits, `labels` `(N,)` u32 class indices.
pub fn clip_loss_with_prompts(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    check_labels(logits, labels)?;
    clip_loss(&logits.index_select(labels, 1)?)
}

/// Cross-entropy of each image over its class prompts: `logits` `(N,
/// classes)`, `labels` `(N,)` u32.
pub fn prompt_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    check_labels(logits, labels)?;
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

fn check_labels(logits: &Tensor, labels: &Tensor) -> Result<()> {
    let (n, classes) = logits.dims2().map_err(|_| {
        Error::invalid_input(
            "logits",
            format!("expected (N, classes), got {:?}", logits.dims()),
        )
    })?;
    if n == 0 {
        return Err(Error::invalid_input("logits", "empty batch"));
    }
    if labels.dims() != [n] || labels.dtype() != DType::U32 {
        return Err(Error::invalid_input(
            "labels",
            format!(
                "expected ({n},) u32, got {:?} {:?}",
                labels.dims(),
                labels.dtype()
            ),
        ));
    }
    let max = labels.max(0)?.to_scalar::<u32>()?;
    if max as usize >= classes {
        return Err(Error::invalid_input(
            "labels",
            format!("label {max} with only {classes} classes"),
        ));
    }
    Ok(())
}
