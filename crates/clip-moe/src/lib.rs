//! CLIP ViT-B/16 (vision + text) whose vision blocks carry a Soft MoE or
//! La-SoftMoE branch beside the MLP.
//!
//! Not implemented yet: this crate is reserved for the model of the paper
//! (issue "clip-moe"). It depends on [`softmoe`] for the MoE layers.
