//! Face anti-spoofing datasets (UniAttackData, JFSFDB, generic lists), CLIP
//! preprocessing, augmentation, a batch loader and a synthetic unified-attack
//! generator.
//!
//! Not implemented yet: this crate is reserved for the data pipeline (issue
//! "fas-data"). It knows nothing of models.
