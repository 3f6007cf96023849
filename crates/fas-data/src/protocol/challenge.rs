//! The CVPR 2024 challenge release: `<root>/{p1,p2.1,p2.2}/` with
//! `train_label.txt`, `dev_label.txt` (0 live, 1 fake,
//! [`crate::ListFormat::Challenge`]) and unlabelled `dev.txt`, `test.txt`
//! ([`crate::ListFormat::ChallengeUnlabelled`]); entries such as
//! `p1/train/000001.jpg` are relative to `<root>`.

use crate::protocol::uniattack::Protocol;
use crate::protocol::ListFormat;
use std::path::{Path, PathBuf};

/// One of the challenge's list files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeList {
    /// `train_label.txt` (labelled).
    TrainLabel,
    /// `dev_label.txt` (labelled; released in the final phase).
    DevLabel,
    /// `dev.txt` (paths only).
    Dev,
    /// `test.txt` (paths only).
    Test,
}

impl ChallengeList {
    /// The file name inside the protocol folder.
    pub fn file_name(self) -> &'static str {
        match self {
            ChallengeList::TrainLabel => "train_label.txt",
            ChallengeList::DevLabel => "dev_label.txt",
            ChallengeList::Dev => "dev.txt",
            ChallengeList::Test => "test.txt",
        }
    }

    /// The format that reads this file.
    pub fn format(self) -> ListFormat {
        match self {
            ChallengeList::TrainLabel | ChallengeList::DevLabel => ListFormat::Challenge,
            ChallengeList::Dev | ChallengeList::Test => ListFormat::ChallengeUnlabelled,
        }
    }
}

/// `<root>/<protocol>/<file>`; the challenge released P1, P2.1 and P2.2 only.
pub fn challenge_list_path(root: &Path, protocol: Protocol, list: ChallengeList) -> PathBuf {
    root.join(protocol.name()).join(list.file_name())
}
