//! The crate's error type: every invalid input is a typed error naming the
//! problem, never a panic or a silent NaN.

use crate::label::Class;

/// Everything that can go wrong when computing metrics, reading score files
/// or drawing plots. Non-exhaustive: later versions may add variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// No scores at all.
    #[error("no samples: metrics need at least one bona fide and one attack score")]
    NoSamples,
    /// Scores and a parallel list (labels, video ids) of different lengths.
    #[error("{scores} scores but {items} {what}: the lists must be parallel, one entry per score")]
    LengthMismatch {
        /// Number of scores given.
        scores: usize,
        /// Number of entries in the other list.
        items: usize,
        /// What the other list holds: `"labels"` or `"video ids"`.
        what: &'static str,
    },
    /// A NaN or infinite score: it has no rank, so no metric is defined.
    #[error(
        "score {index} is {value}: scores must be finite numbers (NaN and infinities have no rank)"
    )]
    NonFiniteScore {
        /// Position of the score in the input.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// One class has no samples: APCER, BPCER, AUC and EER divide by its size.
    #[error("no {class} samples: APCER, BPCER, AUC and EER need both bona fide and attack scores")]
    EmptyClass {
        /// The missing class.
        class: Class,
    },
    /// A NaN threshold decides nothing.
    #[error("threshold is NaN: pass a number (infinities are allowed)")]
    NanThreshold,
    /// A rate argument (target APCER, FPR) outside [0, 1].
    #[error("{what} {value} is outside [0, 1]: rates are fractions, not percentages")]
    RateOutOfRange {
        /// Which argument.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// Dev and test score sets disagree on what a high score means.
    #[error("dev scores say {dev} but test scores say {test}: both sets must use one polarity")]
    PolarityMismatch {
        /// Polarity of the dev set.
        dev: crate::label::Polarity,
        /// Polarity of the test set.
        test: crate::label::Polarity,
    },
    /// A score-file line that is neither `<score> <label>` nor
    /// `<id> <score> <label>`, or whose label is a number other than 0 and 1.
    #[error("score file {file} line {line}: expected {expected}, got \"{got}\"")]
    MalformedLine {
        /// File name as given.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What the line should have held.
        expected: String,
        /// The line's text, without its line ending.
        got: String,
    },
    /// A score-file line whose score parses but is NaN or infinite.
    #[error("score file {file} line {line}: score \"{got}\" is not a finite number")]
    NonFiniteScoreInFile {
        /// File name as given.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The score token.
        got: String,
    },
    /// Two lines of a score file name the same sample: it would be counted
    /// twice.
    #[error("score file {file} line {line}: id \"{id}\" is already on line {first_line}; each sample must be listed once")]
    DuplicateId {
        /// File name as given.
        file: String,
        /// 1-based line of the repetition.
        line: usize,
        /// 1-based line where the id first appears.
        first_line: usize,
        /// The id (shortened if very long).
        id: String,
    },
    /// Scores outside [0, 1] met the organisers' threshold grid, which only
    /// spans 0 to 1.1: the threshold and EER would be meaningless.
    #[error(
        "{set} scores range from {low} to {high}, outside [0, 1], but the organisers' grid \
         threshold and EER are defined for probabilities only (0 to 1.1): are these logits? \
         Convert them to probabilities (the library can also choose the threshold with \
         ThresholdRule::ExactSweep)"
    )]
    ScoresOutsideGrid {
        /// Which scores: `dev` (where the threshold is chosen) or `test`.
        set: &'static str,
        /// Lowest score.
        low: f64,
        /// Highest score.
        high: f64,
    },
    /// A score file that could not be read.
    #[error("cannot read score file {file}: {source}")]
    ReadScoreFile {
        /// File name as given.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A score-file path that, after following symlinks, is not a regular
    /// file: a FIFO would block until a writer appears, and a device such as
    /// `/dev/zero` never ends.
    #[error(
        "score file {file} is not a regular file but {kind}: give the path of a file of scores \
         (save a pipe's output to a file first)"
    )]
    ScoreFileNotRegular {
        /// File name as given.
        file: String,
        /// What it is instead: `"a FIFO"`, `"a directory"`, ...
        kind: &'static str,
    },
    /// A score file larger than
    /// [`MAX_SCORE_FILE_BYTES`](crate::score_file::MAX_SCORE_FILE_BYTES):
    /// no score file is that large, so it is the wrong file.
    #[error(
        "score file {file} is larger than {limit} bytes, the most a score file may hold \
         (fas_metrics::score_file::MAX_SCORE_FILE_BYTES): is it the right file?"
    )]
    ScoreFileTooLarge {
        /// File name as given.
        file: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// Frames of one video carry different labels, so the video has no label.
    #[error("video {video}: frames labelled both {first} and {second}; a video needs one label")]
    InconsistentVideoLabel {
        /// The video id.
        video: String,
        /// Label of the video's first frame.
        first: String,
        /// The conflicting label.
        second: String,
    },
    /// Drawing or encoding a plot failed (feature `plot`).
    #[error("cannot draw {file}: {reason}")]
    Plot {
        /// Output file.
        file: String,
        /// What plotters reported.
        reason: String,
    },
    /// A plot output path taken by something else: the plot directory (or a
    /// path above it) is an existing file, or a plot's file name is an
    /// existing directory. Found before anything is drawn.
    #[error("cannot write plots to {dir}: {path} exists and {problem}")]
    PlotPathTaken {
        /// The plot directory as given.
        dir: String,
        /// The path in the way.
        path: String,
        /// What is wrong with it: `"is not a directory"`, `"is a broken
        /// symlink"` or `"is a directory, not a plot to replace"`.
        problem: &'static str,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MetricsError>;
