//! Labels: bona fide versus attack, with the attack's kind, and the coarse
//! category used for counts and per-category error rates.
//!
//! Every dataset states its integer convention ([`LabelConvention`]); nothing
//! here guesses whether `1` means live or fake, because published FAS code
//! disagrees (see `docs/synthetic-data.md` and the conventions notes).

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of presentation attack a sample is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttackKind {
    /// Physical print attack (UniAttackData `cloth-indoor`, `cloth-outdoor`).
    Print,
    /// Physical replay attack on a screen (UniAttackData `screen-*`).
    Replay,
    /// Physical attack whose medium is not known (detailed label 1 without a path hint).
    Physical,
    /// Digital adversarial perturbation; `method` from `adv-attacks/<method>/` when present.
    Adversarial {
        /// Attack method, e.g. `alma`, when the path names it.
        method: Option<String>,
    },
    /// Digital face editing (swap, reenactment); `method` e.g. `DaGAN` when the path names it.
    Editing {
        /// Editing method, e.g. `FaceDancer`, when the path names it.
        method: Option<String>,
    },
    /// An attack of unknown kind (binary and challenge lists say only "fake").
    Unknown,
}

impl AttackKind {
    /// The coarse category this kind belongs to.
    pub fn category(&self) -> Category {
        match self {
            AttackKind::Print | AttackKind::Replay | AttackKind::Physical => Category::Physical,
            AttackKind::Adversarial { .. } => Category::Adversarial,
            AttackKind::Editing { .. } => Category::Editing,
            AttackKind::Unknown => Category::Unknown,
        }
    }

    /// Keeps `self` unless `hint` (from the path) is more specific and agrees
    /// with it: a label says "physical", the path says "print" -> print. A hint
    /// that contradicts the label is ignored: the label file is authoritative.
    pub fn refined_by(self, hint: Option<AttackKind>) -> AttackKind {
        match hint {
            Some(hint) if self == AttackKind::Unknown => hint,
            Some(hint)
                if hint.category() == self.category() && hint.is_more_specific_than(&self) =>
            {
                hint
            }
            _ => self,
        }
    }

    fn is_more_specific_than(&self, other: &AttackKind) -> bool {
        matches!(
            (self, other),
            (AttackKind::Print | AttackKind::Replay, AttackKind::Physical)
                | (
                    AttackKind::Adversarial { method: Some(_) },
                    AttackKind::Adversarial { method: None }
                )
                | (
                    AttackKind::Editing { method: Some(_) },
                    AttackKind::Editing { method: None }
                )
        )
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttackKind::Print => f.write_str("print"),
            AttackKind::Replay => f.write_str("replay"),
            AttackKind::Physical => f.write_str("physical"),
            AttackKind::Adversarial { method: Some(m) } => write!(f, "adversarial/{m}"),
            AttackKind::Adversarial { method: None } => f.write_str("adversarial"),
            AttackKind::Editing { method: Some(m) } => write!(f, "editing/{m}"),
            AttackKind::Editing { method: None } => f.write_str("editing"),
            AttackKind::Unknown => f.write_str("unknown-attack"),
        }
    }
}

/// The ground truth of one sample.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Label {
    /// A live (bona fide) face.
    BonaFide,
    /// A presentation or digital attack.
    Attack(AttackKind),
}

impl Label {
    /// True for attacks.
    pub fn is_attack(&self) -> bool {
        matches!(self, Label::Attack(_))
    }

    /// The binary training target with the project's polarity: 0 bona fide, 1 attack.
    pub fn attack_target(&self) -> u32 {
        u32::from(self.is_attack())
    }

    /// The coarse category (live, physical, adversarial, editing, unknown).
    pub fn category(&self) -> Category {
        match self {
            Label::BonaFide => Category::Live,
            Label::Attack(kind) => kind.category(),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::BonaFide => f.write_str("live"),
            Label::Attack(kind) => kind.fmt(f),
        }
    }
}

/// Coarse category, the unit of UniAttackData's tables and of per-category APCER.
/// Unlabelled samples count as [`Category::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Bona fide.
    Live,
    /// Print, replay or other physical attack.
    Physical,
    /// Digital adversarial attack.
    Adversarial,
    /// Digital face editing.
    Editing,
    /// An attack of unknown kind, or an unlabelled sample.
    Unknown,
}

impl Category {
    /// All categories, in report order.
    pub const ALL: [Category; 5] = [
        Category::Live,
        Category::Physical,
        Category::Adversarial,
        Category::Editing,
        Category::Unknown,
    ];

    /// The lowercase name used in reports and JSON (`live`, `physical`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Category::Live => "live",
            Category::Physical => "physical",
            Category::Adversarial => "adversarial",
            Category::Editing => "editing",
            Category::Unknown => "unknown",
        }
    }
}

/// How the integers in a list file map to labels. Stated by the caller (or by
/// the named format), never inferred from the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LabelConvention {
    /// UniAttackData protocol lists: 0 live, 1 physical, 2 digital adversarial,
    /// 3 digital editing.
    #[default]
    UniattackDetailed,
    /// CVPR 2024 challenge `*_label.txt`: 0 live, 1 fake.
    LiveZeroFakeOne,
    /// UniAttackData "Protocol" binary lists (FA3) and JFSFDB lists: 1 live, 0 fake.
    LiveOneFakeZero,
    /// Lists of paths only (challenge `dev.txt`, `test.txt`): no label column.
    Unlabelled,
    /// Any other integer mapping: each `(value, label)` pair, the rest rejected.
    Custom(Vec<(i64, Label)>),
}

impl LabelConvention {
    /// True when lines carry a label column.
    pub fn has_labels(&self) -> bool {
        !matches!(self, LabelConvention::Unlabelled)
    }

    /// Maps a label value, or explains which values this convention accepts.
    pub fn label(&self, value: i64) -> Result<Label, String> {
        let mapped = match self {
            LabelConvention::UniattackDetailed => match value {
                0 => Some(Label::BonaFide),
                1 => Some(Label::Attack(AttackKind::Physical)),
                2 => Some(Label::Attack(AttackKind::Adversarial { method: None })),
                3 => Some(Label::Attack(AttackKind::Editing { method: None })),
                _ => None,
            },
            LabelConvention::LiveZeroFakeOne => match value {
                0 => Some(Label::BonaFide),
                1 => Some(Label::Attack(AttackKind::Unknown)),
                _ => None,
            },
            LabelConvention::LiveOneFakeZero => match value {
                1 => Some(Label::BonaFide),
                0 => Some(Label::Attack(AttackKind::Unknown)),
                _ => None,
            },
            LabelConvention::Unlabelled => None,
            LabelConvention::Custom(pairs) => pairs
                .iter()
                .find(|(v, _)| *v == value)
                .map(|(_, l)| l.clone()),
        };
        mapped.ok_or_else(|| format!("unknown label {value} for convention {}", self.describe()))
    }

    /// A one-line statement of the convention, used in error messages.
    pub fn describe(&self) -> String {
        match self {
            LabelConvention::UniattackDetailed => {
                "uniattack-detailed (0 live, 1 physical, 2 adversarial, 3 editing)".into()
            }
            LabelConvention::LiveZeroFakeOne => "live-zero-fake-one (0 live, 1 fake)".into(),
            LabelConvention::LiveOneFakeZero => "live-one-fake-zero (1 live, 0 fake)".into(),
            LabelConvention::Unlabelled => "unlabelled (no label column)".into(),
            LabelConvention::Custom(pairs) => {
                let body: Vec<String> = pairs.iter().map(|(v, l)| format!("{v} {l}")).collect();
                format!("custom ({})", body.join(", "))
            }
        }
    }
}

/// Editing methods of UniAttackData, recognised as top-level data folders.
const EDITING_METHODS: [&str; 6] = [
    "DaGAN",
    "FaceDancer",
    "InsightFace",
    "OneShotTH",
    "SAFA",
    "simswap",
];

/// The attack kind a path implies, from UniAttackData's folder names (whole
/// components, case-insensitive): `cloth-*` below a `spoof` folder print,
/// `screen-*` below a `spoof` folder replay, any other path below `spoof`
/// physical; `adv-attacks/<method>/...` adversarial; the editing method
/// folders (`DaGAN`, `FaceDancer`, ...) or a `<ID>-To-<ID>` identity-pair
/// folder editing (method = the folder under `Data/`). `None` when the path
/// says nothing: a folder merely starting with `print` or `screen` is no hint.
pub fn attack_hint_from_path(entry: &str) -> Option<AttackKind> {
    let parts: Vec<&str> = entry.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    if let Some(i) = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("adv-attacks"))
    {
        let method = parts
            .get(i + 1)
            .filter(|_| i + 2 < parts.len())
            .map(|m| m.to_string());
        return Some(AttackKind::Adversarial { method });
    }
    // Physical attacks: `cloth-*` and `screen-*` folders below a `spoof` folder.
    let below_spoof = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("spoof"))
        .map(|i| &parts[i + 1..]);
    let medium = |prefix: &str| {
        below_spoof.is_some_and(|rest| {
            rest.iter().any(|p| {
                p.get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
                    && p.len() > prefix.len()
            })
        })
    };
    if medium("cloth-") {
        return Some(AttackKind::Print);
    }
    if medium("screen-") {
        return Some(AttackKind::Replay);
    }
    if let Some(m) = parts
        .iter()
        .find(|p| EDITING_METHODS.iter().any(|m| m.eq_ignore_ascii_case(p)))
    {
        return Some(AttackKind::Editing {
            method: Some(m.to_string()),
        });
    }
    if parts.iter().any(|p| is_identity_pair(p)) {
        let method = parts
            .iter()
            .position(|p| *p == "Data")
            .and_then(|i| parts.get(i + 1))
            .map(|m| m.to_string());
        return Some(AttackKind::Editing { method });
    }
    below_spoof.map(|_| AttackKind::Physical)
}

/// `AF-441-To-CA-330`: a source and a reference identity joined by `-To-`.
fn is_identity_pair(component: &str) -> bool {
    match component.split_once("-To-") {
        Some((a, b)) => is_identity(a) && is_identity(b),
        None => false,
    }
}

fn is_identity(s: &str) -> bool {
    match s.split_once('-') {
        Some((region, number)) => {
            !region.is_empty()
                && region.chars().all(|c| c.is_ascii_uppercase())
                && !number.is_empty()
                && number.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_uniattack_folders() {
        let h = |p| attack_hint_from_path(p);
        assert_eq!(
            h("UniAttackData/Data/spoof/east-asia/EA-321/cloth-indoor/color/0070.jpg"),
            Some(AttackKind::Print)
        );
        assert_eq!(
            h("UniAttackData/Data/spoof/africa/AF-1/screen-rs/color/0145.jpg"),
            Some(AttackKind::Replay)
        );
        assert_eq!(
            h("UniAttackData/Data/adv-attacks/alma/alma_africa-112x112/AF-001/0057.jpg"),
            Some(AttackKind::Adversarial {
                method: Some("alma".into())
            })
        );
        assert_eq!(
            h("UniAttackData/Data/DaGAN/africa_faces/AF-441-To-CA-330/27.jpg"),
            Some(AttackKind::Editing {
                method: Some("DaGAN".into())
            })
        );
        assert_eq!(
            h("UniAttackData/Data/SynthSwap/africa/AF-4-To-CA-3/27.jpg"),
            Some(AttackKind::Editing {
                method: Some("SynthSwap".into())
            })
        );
        assert_eq!(
            h("UniAttackData/Data/live/africa/AF-1/real.rssdk/color/0070.jpg"),
            None
        );
        assert_eq!(h("p1/train/000001.jpg"), None);
        // Only UniAttackData's own names count.
        assert_eq!(h("printed_photos/cloth-indoor/0001.jpg"), None);
        assert_eq!(h("screenshots/replay_2/0001.jpg"), None);
        assert_eq!(
            h("data/spoof/printout/0001.jpg"),
            Some(AttackKind::Physical)
        );
        assert_eq!(
            h("data/SPOOF/x/Screen-ipad/0001.jpg"),
            Some(AttackKind::Replay)
        );
    }

    #[test]
    fn label_wins_over_contradicting_hint() {
        let physical = AttackKind::Physical;
        assert_eq!(
            physical.clone().refined_by(Some(AttackKind::Replay)),
            AttackKind::Replay
        );
        let adv = AttackKind::Adversarial { method: None };
        assert_eq!(physical.refined_by(Some(adv.clone())), AttackKind::Physical);
        assert_eq!(AttackKind::Unknown.refined_by(Some(adv.clone())), adv);
    }

    #[test]
    fn conventions_reject_unknown_values() {
        assert_eq!(
            LabelConvention::LiveOneFakeZero.label(1),
            Ok(Label::BonaFide)
        );
        assert!(LabelConvention::LiveOneFakeZero
            .label(2)
            .unwrap_err()
            .contains("unknown label 2"));
        assert_eq!(
            LabelConvention::UniattackDetailed
                .label(3)
                .unwrap()
                .category(),
            Category::Editing
        );
    }
}
