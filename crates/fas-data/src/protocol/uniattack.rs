//! UniAttackData protocol names and where their list files live.
//!
//! CASIA-FAS-Dataset ships `UniAttackData/protocol/UniAttackData@<protocol>_<modality>_<split>.txt`,
//! lines `<path from the data root> <label>` with 0 live, 1 physical,
//! 2 digital adversarial, 3 digital editing ([`crate::ListFormat::UniattackProtocol`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// A UniAttackData protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// Unified: every attack type in every split.
    P1,
    /// P1 variant testing face-forgery categories apart.
    P1_1,
    /// P1 variant testing face-forgery categories apart.
    P1_2,
    /// P1 variant testing face-forgery categories apart.
    P1_3,
    /// Unseen physical attacks: trained on live + digital, tested on live + physical.
    P2_1,
    /// Unseen digital attacks: trained on live + physical, tested on live + digital.
    P2_2,
}

impl Protocol {
    /// All protocols, in publication order.
    pub const ALL: [Protocol; 6] = [
        Protocol::P1,
        Protocol::P1_1,
        Protocol::P1_2,
        Protocol::P1_3,
        Protocol::P2_1,
        Protocol::P2_2,
    ];

    /// The protocol named `name` (`p1`, `p1.1`, ..., `p2.2`; case-insensitive),
    /// `None` for any other name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The name used in file names: `p1`, `p1.1`, ..., `p2.2`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::P1 => "p1",
            Protocol::P1_1 => "p1.1",
            Protocol::P1_2 => "p1.2",
            Protocol::P1_3 => "p1.3",
            Protocol::P2_1 => "p2.1",
            Protocol::P2_2 => "p2.2",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Image lists (one frame per line) or video lists (one frame directory per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Modality {
    /// `_image_` lists.
    Image,
    /// `_video_` lists; read them with [`crate::ListFormat::UniattackProtocolVideo`].
    Video,
}

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Split {
    /// Training set.
    Train,
    /// Development set (threshold calibration).
    Dev,
    /// Test set.
    Test,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    /// `train`, `dev` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

/// `UniAttackData@p2.1_image_test.txt`.
pub fn protocol_file_name(protocol: Protocol, modality: Modality, split: Split) -> String {
    let modality = match modality {
        Modality::Image => "image",
        Modality::Video => "video",
    };
    format!(
        "UniAttackData@{}_{modality}_{}.txt",
        protocol.name(),
        split.name()
    )
}

/// `<root>/UniAttackData/protocol/UniAttackData@<protocol>_<modality>_<split>.txt`,
/// where `root` is the directory the list entries are relative to (it holds `UniAttackData/`).
pub fn protocol_list_path(
    root: &Path,
    protocol: Protocol,
    modality: Modality,
    split: Split,
) -> PathBuf {
    root.join("UniAttackData")
        .join("protocol")
        .join(protocol_file_name(protocol, modality, split))
}
