//! Video-level aggregation: one score per video, the mean of its frames'
//! scores (SSDG/FLIP per-video mean probability).

use std::collections::HashMap;

use crate::error::{MetricsError, Result};
use crate::label::{Label, ScoredSample};
use crate::validate::{check_parallel, check_scores};

/// Mean score per video id, videos in order of first appearance, each with
/// its frames' common label. Frame scores are summed in input order, then
/// divided by the frame count.
///
/// Errors: mismatched lengths, no frames, a non-finite score, or a video whose
/// frames carry different labels.
pub fn mean_score_per_video<S: AsRef<str>>(
    video_ids: &[S],
    scores: &[f64],
    labels: &[Label],
) -> Result<Vec<ScoredSample>> {
    check_parallel(scores.len(), video_ids.len(), "video ids")?;
    check_parallel(scores.len(), labels.len(), "labels")?;
    check_scores(scores)?;
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    // (sum, frames) per video, in first-appearance order.
    let mut sums: Vec<(f64, usize)> = Vec::new();
    let mut videos: Vec<ScoredSample> = Vec::new();
    for ((id, &score), label) in video_ids.iter().zip(scores).zip(labels) {
        let id = id.as_ref();
        let index = *index_of.entry(id).or_insert_with(|| {
            videos.push(ScoredSample {
                id: Some(id.to_owned()),
                score: 0.0,
                label: label.clone(),
            });
            sums.push((0.0, 0));
            videos.len() - 1
        });
        if videos[index].label != *label {
            return Err(MetricsError::InconsistentVideoLabel {
                video: id.to_owned(),
                first: videos[index].label.to_string(),
                second: label.to_string(),
            });
        }
        sums[index].0 += score;
        sums[index].1 += 1;
    }
    for (video, (sum, frames)) in videos.iter_mut().zip(sums) {
        video.score = sum / frames as f64;
    }
    Ok(videos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-worked: video a = frames 0.2, 0.4 -> 0.3 (0.6 / 2 in floating point);
    /// b = 0.9 alone.
    #[test]
    fn means_per_video_in_first_appearance_order() {
        let videos = mean_score_per_video(
            &["a", "b", "a"],
            &[0.2, 0.9, 0.4],
            &[Label::Bonafide, Label::attack(), Label::Bonafide],
        )
        .unwrap();
        assert_eq!(videos.len(), 2);
        assert_eq!(videos[0].id.as_deref(), Some("a"));
        assert_eq!(videos[0].score, (0.2 + 0.4) / 2.0);
        assert_eq!(
            (videos[1].score, videos[1].label.clone()),
            (0.9, Label::attack())
        );
    }

    #[test]
    fn rejects_conflicting_labels_and_bad_input() {
        let err = mean_score_per_video(
            &["a", "a"],
            &[0.2, 0.4],
            &[Label::Bonafide, Label::attack()],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "video a: frames labelled both bona fide and attack; a video needs one label"
        );
        let err = mean_score_per_video(&["a"], &[0.2, 0.4], &[Label::Bonafide, Label::Bonafide])
            .unwrap_err();
        assert!(
            matches!(
                err,
                MetricsError::LengthMismatch {
                    scores: 2,
                    items: 1,
                    what: "video ids"
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "2 scores but 1 video ids: the lists must be parallel, one entry per score"
        );
        assert!(matches!(
            mean_score_per_video(&["a", "b"], &[0.2, 0.4], &[Label::Bonafide]),
            Err(MetricsError::LengthMismatch {
                items: 1,
                what: "labels",
                ..
            })
        ));
        assert!(matches!(
            mean_score_per_video::<&str>(&[], &[], &[]),
            Err(MetricsError::NoSamples)
        ));
        assert!(matches!(
            mean_score_per_video(&["a"], &[f64::NAN], &[Label::Bonafide]),
            Err(MetricsError::NonFiniteScore { index: 0, .. })
        ));
    }
}
