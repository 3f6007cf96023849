//! Prompt templates, the prompt classifier and the losses. Loss values come
//! from PyTorch (`torch.nn.functional.cross_entropy`), recorded by
//! `scripts/clip_moe/gen_fixtures.py`.

mod common;

use candle_core::{DType, Device, Tensor};
use clip_moe::loss::{clip_loss, clip_loss_with_prompts, prompt_cross_entropy};
use clip_moe::{
    attack_probability, l2_normalize, load_model, ClipTokenizer, FaceClass, PromptClassifier,
    PromptTemplate,
};
use common::{expected, fixture_config, fixture_dir, max_abs_diff};

#[test]
fn templates_follow_table_4() {
    assert_eq!(PromptTemplate::default(), PromptTemplate::T8);
    assert_eq!(
        PromptTemplate::T8.sentence(FaceClass::Fake),
        "This is an image of a fake face."
    );
    assert_eq!(
        PromptTemplate::T3.sentence(FaceClass::Live),
        "A photo of a live face."
    );
    assert_eq!(
        PromptTemplate::T2.sentence(FaceClass::Fake),
        "Fake face is in this photo."
    );
    assert_eq!(PromptTemplate::ALL.len(), 8);
    assert_eq!((FaceClass::Live.index(), FaceClass::Fake.index()), (0, 1));
}

#[test]
fn classifier_scores_against_both_prompts() -> anyhow::Result<()> {
    let cfg = fixture_config();
    let device = Device::Cpu;
    let model = load_model(&cfg, fixture_dir().join("model.safetensors"), &device, true)?.model;
    let tokenizer = ClipTokenizer::from_file(
        fixture_dir().join("tokenizer.json"),
        cfg.text_config.max_position_embeddings,
    )?;
    let pixels = &expected()["pixel_values"];

    // T-8 alone: the logits are the model's own image-text logits against
    // the two sentences, which the fixture's first two prompts are
    // ("This is an image of a fake/live face.").
    let single = PromptClassifier::new(&model, &tokenizer, &[PromptTemplate::T8], true, &device)?;
    let logits = single.image_logits(&model, pixels)?;
    let want = &expected()["logits_per_image"];
    let want = Tensor::cat(&[want.narrow(1, 1, 1)?, want.narrow(1, 0, 1)?], 1)?; // live, fake
    assert!(max_abs_diff(&logits, &want) < 1e-4);

    let probs = attack_probability(&logits)?;
    let softmax = candle_nn::ops::softmax(&logits, 1)?
        .narrow(1, 1, 1)?
        .squeeze(1)?;
    assert!(max_abs_diff(&probs, &softmax) < 1e-7);

    // An ensemble: frozen (cached, detached) and live text give the same
    // values, the class embeddings are unit rows.
    let frozen = PromptClassifier::new(&model, &tokenizer, &PromptTemplate::ALL, true, &device)?;
    let live = PromptClassifier::new(&model, &tokenizer, &PromptTemplate::ALL, false, &device)?;
    let a = frozen.class_embeddings(&model)?;
    let b = live.class_embeddings(&model)?;
    assert_eq!(a.dims(), &[2, cfg.projection_dim]);
    assert!(max_abs_diff(&a, &b) < 1e-6);
    let norms = a.sqr()?.sum(1)?;
    assert!(max_abs_diff(&norms, &Tensor::ones(2, DType::F32, &device)?) < 1e-5);
    let image_embeds = l2_normalize(&model.image_features(pixels)?)?;
    assert_eq!(frozen.logits(&model, &image_embeds)?.dims(), &[2, 2]);
    Ok(())
}

#[test]
fn losses_match_pytorch() -> anyhow::Result<()> {
    let want = expected();
    let logits = &want["loss_logits"];
    let labels = want["loss_labels"].to_dtype(DType::U32)?;
    let ce = prompt_cross_entropy(logits, &labels)?.to_scalar::<f32>()?;
    let torch_ce = want["loss_prompt_ce"].to_scalar::<f32>()?;
    assert!((ce - torch_ce).abs() < 1e-5, "{ce} vs {torch_ce}");
    let eq1 = clip_loss_with_prompts(logits, &labels)?.to_scalar::<f32>()?;
    let torch_eq1 = want["loss_clip"].to_scalar::<f32>()?;
    assert!((eq1 - torch_eq1).abs() < 1e-5, "{eq1} vs {torch_eq1}");
    Ok(())
}

#[test]
fn losses_reject_bad_inputs() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let rect = Tensor::zeros((2, 3), DType::F32, &device)?;
    assert!(clip_loss(&rect).unwrap_err().to_string().contains("square"));
    let labels = Tensor::new(&[0u32, 2], &device)?;
    let logits = Tensor::zeros((2, 2), DType::F32, &device)?;
    let err = prompt_cross_entropy(&logits, &labels).unwrap_err();
    assert!(err.to_string().contains("label 2"), "{err}");
    Ok(())
}
