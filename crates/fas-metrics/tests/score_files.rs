//! The score-file path and the `evaluate_scores` command line
//! ([`fas_metrics::cli::run`]) on committed files:
//! `tests/fixtures/scores/{dev,test_crlf}.txt` and their expected report come
//! from `scripts/fas_metrics/gen_fixtures.py` (CFB evaluator flow, NumPy
//! re-implementation, positive = live as in FA3); `malformed.txt` is
//! hand-written.

mod common;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;

use common::{check_type_rates, close, TypeRate};
use fas_metrics::cli::{self, CliError};
use fas_metrics::score_file::MAX_SCORE_FILE_BYTES;
use fas_metrics::{
    evaluate_protocol, read_score_file, Label, MetricsError, Polarity, ProtocolConfig, ScoreSet,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    polarity: Polarity,
    dev_samples: usize,
    test_samples: usize,
    threshold: f64,
    apcer: f64,
    bpcer: f64,
    acer: f64,
    acc: f64,
    hter: f64,
    auc: f64,
    eer: f64,
    per_attack_type: Vec<TypeRate>,
    test_only: TestOnly,
}

#[derive(Deserialize)]
struct TestOnly {
    threshold: f64,
    acer: f64,
}

fn expected() -> Expected {
    serde_json::from_str(include_str!("fixtures/scores/expected_report.json"))
        .expect("fixture parses")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scores")
        .join(name)
}

/// Parsing (LF and CRLF, a byte order mark, comments, blank lines, id column,
/// tabs, bona fide words, attack-type names) and evaluation match the
/// generator's expected report (generator: scripts/fas_metrics/gen_fixtures.py).
#[test]
fn evaluates_committed_score_files() {
    let expected = expected();
    let dev = read_score_file(fixture("dev.txt")).unwrap();
    let test = read_score_file(fixture("test_crlf.txt")).unwrap();
    assert_eq!(
        (dev.len(), test.len()),
        (expected.dev_samples, expected.test_samples)
    );
    assert!(dev.iter().all(|s| s.id.is_none()));
    assert_eq!(test[0].id.as_deref(), Some("test/000000.jpg"));
    assert_eq!(test[0].label, Label::attack_of("digital"));
    // Bona fide written as 0, live, Bonafide in turn.
    for index in [1, 2, 5] {
        assert_eq!(test[index].label, Label::Bonafide, "line {}", index + 2);
    }

    let dev = ScoreSet::from_samples(&dev, expected.polarity).unwrap();
    let test = ScoreSet::from_samples(&test, expected.polarity).unwrap();
    let report = evaluate_protocol(Some(&dev), &test, ProtocolConfig::default()).unwrap();
    assert_eq!(report.threshold, expected.threshold);
    close(report.apcer, expected.apcer, "apcer");
    close(report.bpcer, expected.bpcer, "bpcer");
    close(report.acer, expected.acer, "acer");
    close(report.acc, expected.acc, "acc");
    close(report.hter, expected.hter, "hter");
    close(report.auc, expected.auc, "auc");
    close(report.eer, expected.eer, "eer");
    check_type_rates(
        &report.per_attack_type,
        &expected.per_attack_type,
        "score files",
    );

    let own = evaluate_protocol(None, &test, ProtocolConfig::default()).unwrap();
    assert_eq!(own.threshold, expected.test_only.threshold);
    close(own.acer, expected.test_only.acer, "test-only acer");
}

/// A malformed line is reported with its file and 1-based line number.
#[test]
fn malformed_line_names_file_and_line() {
    let path = fixture("malformed.txt");
    let err = read_score_file(&path).unwrap_err();
    assert!(
        matches!(err, MetricsError::MalformedLine { line: 4, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("score file {} line 4: expected", path.display())),
        "{message}"
    );
    assert!(message.ends_with("got \"video_3 high 1\""), "{message}");
}

/// Runs the command line on `args`; returns its result, stdout and stderr.
fn run_cli(args: &[&str]) -> (Result<(), CliError>, String, String) {
    let args = args.iter().map(OsString::from);
    let (mut out, mut log) = (Vec::new(), Vec::new());
    let result = cli::run(args, &mut out, &mut log);
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (result, text(out), text(log))
}

fn path_arg(name: &str) -> String {
    fixture(name).to_str().expect("UTF-8 path").to_owned()
}

/// `--json` prints the report's keys with the generator's values and the
/// `--name` given; the threshold comes from `--dev`.
#[test]
fn cli_json_with_dev_and_name() {
    let expected = expected();
    let (dev, test) = (path_arg("dev.txt"), path_arg("test_crlf.txt"));
    let args = [
        "--dev", &dev, "--test", &test, "--higher", "bonafide", "--json", "--name", "P1",
    ];
    let (result, out, log) = run_cli(&args);
    result.unwrap();
    assert_eq!(log, "");
    let json: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    for key in [
        "threshold",
        "apcer",
        "bpcer",
        "acer",
        "acc",
        "auc",
        "eer",
        "hter",
    ] {
        assert!(json[key].is_number(), "{key} in {out}");
    }
    assert_eq!(json["protocol"], "P1");
    assert_eq!(json["threshold_source"], "dev");
    assert_eq!(json["threshold"], expected.threshold);
    close(json["acer"].as_f64().unwrap(), expected.acer, "cli acer");
    close(json["auc"].as_f64().unwrap(), expected.auc, "cli auc");
    let per_type = json["per_attack_type"].as_array().expect("per_attack_type");
    assert_eq!(per_type.len(), expected.per_attack_type.len());
    for (got, want) in per_type.iter().zip(&expected.per_attack_type) {
        assert_eq!(got["attack_type"], want.attack_type.as_str());
        assert_eq!(got["accepted"], want.accepted);
    }
}

/// Without `--dev` the threshold is the test set's own grid EER point; the
/// markdown table names the protocol.
#[test]
fn cli_without_dev_uses_the_test_eer() {
    let expected = expected();
    let test = path_arg("test_crlf.txt");
    let (result, out, _) = run_cli(&["--test", &test, "--higher", "bonafide", "--json"]);
    result.unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["threshold_source"], "test");
    assert_eq!(json["protocol"], "test");
    assert_eq!(json["threshold"], expected.test_only.threshold);
    close(
        json["acer"].as_f64().unwrap(),
        expected.test_only.acer,
        "test-only acer",
    );

    let args = ["--test", &test, "--higher", "bonafide", "--name", "P2.1"];
    let (result, out, _) = run_cli(&args);
    result.unwrap();
    assert!(out.starts_with("| Protocol | ACER (%)"), "{out}");
    assert!(out.contains("\n| P2.1 | "), "{out}");
    assert!(out.contains("chosen on test"), "{out}");
}

/// Argument errors are usage errors and come before any output.
#[test]
fn cli_rejects_bad_arguments_before_output() {
    let test = path_arg("test_crlf.txt");
    // Each error names what is wrong and points at the usage.
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--higher", "attack"], &["required", "--test <FILE>"]),
        (&["--test", &test], &["required", "--higher <HIGHER>"]),
        (
            &["--test", &test, "--higher", "live"],
            &["invalid value 'live'", "--higher", "attack, bonafide"],
        ),
        (
            &["--test", &test, "--higher", "attack", "--name"],
            &["--name <PROTOCOL>", "value is required"],
        ),
        (
            &["--test", &test, "--higher", "attack", "--bogus"],
            &["unexpected argument '--bogus'"],
        ),
    ];
    for (args, parts) in cases {
        let (result, out, _) = run_cli(args);
        let err = result.unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{args:?}: {err}");
        let text = err.to_string();
        for part in parts {
            assert!(text.contains(part), "{args:?}: {part:?} not in {text}");
        }
        assert!(
            text.contains("Usage: evaluate_scores") || text.contains("try '--help'"),
            "{args:?}: {text}"
        );
        assert_eq!(out, "", "{args:?}");
    }
    let (result, out, _) = run_cli(&["--help"]);
    result.unwrap();
    assert!(
        out.starts_with("Metrics of face anti-spoofing score files"),
        "{out}"
    );
    for flag in [
        "--dev <FILE>",
        "--test <FILE>",
        "--higher <HIGHER>",
        "--json",
        "--name <PROTOCOL>",
        "--plot-dir <DIR>",
        "--version",
    ] {
        assert!(out.contains(flag), "{flag} not in --help: {out}");
    }
    let (result, out, _) = run_cli(&["--version"]);
    result.unwrap();
    assert_eq!(
        out,
        format!("evaluate_scores {}\n", env!("CARGO_PKG_VERSION"))
    );

    #[cfg(not(feature = "plot"))]
    {
        let args = ["--test", &test, "--higher", "attack", "--plot-dir", "out"];
        let (result, out, _) = run_cli(&args);
        let err = result.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--plot-dir needs the plot feature"),
            "{err}"
        );
        assert_eq!(out, "");
    }
}

/// A non-UTF-8 argument is an error, not a panic (Unix: arbitrary bytes).
#[cfg(unix)]
#[test]
fn cli_non_utf8_arguments_are_errors() {
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(vec![b'-', b'-', 0xff]);
    let mut out = Vec::new();
    let err = cli::run([bad], &mut out, &mut io::sink()).unwrap_err();
    assert!(matches!(err, CliError::Usage(_)), "{err}");
    let name = OsString::from_vec(vec![0xff]);
    let args = [
        "--name".into(),
        name,
        "--test".into(),
        "t.txt".into(),
        "--higher".into(),
        "attack".into(),
    ];
    let err = cli::run(args, &mut out, &mut io::sink()).unwrap_err();
    assert!(matches!(err, CliError::Usage(_)), "{err}");
    assert!(err.to_string().contains("UTF-8"), "{err}");
    // A non-UTF-8 path is a path: it reaches the file system.
    let path = OsString::from_vec(b"/nonexistent/\xff.txt".to_vec());
    let args = ["--test".into(), path, "--higher".into(), "attack".into()];
    let err = cli::run(args, &mut out, &mut io::sink()).unwrap_err();
    assert!(
        matches!(err, CliError::Metrics(MetricsError::ReadScoreFile { .. })),
        "{err}"
    );
    assert!(out.is_empty());
}

/// A score file with one class only is an error naming the file.
#[test]
fn cli_score_set_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one_class.txt");
    std::fs::write(&path, "0.1 live\n0.2 0\n").unwrap();
    let path = path.to_str().unwrap().to_owned();
    let (result, out, _) = run_cli(&["--test", &path, "--higher", "attack"]);
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            CliError::ScoreSet {
                source: MetricsError::EmptyClass { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("score file {path}: no attack samples")),
        "{err}"
    );
    assert_eq!(out, "");
}

/// Writes fail after `budget` bytes with `kind`.
struct FailingWriter {
    budget: usize,
    kind: io::ErrorKind,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::from(self.kind));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A closed pipe (`| head`) is success; any other write error is reported.
#[test]
fn cli_broken_pipe_is_success() {
    let test = path_arg("test_crlf.txt");
    let args = || ["--test", &test, "--higher", "bonafide"].map(OsString::from);
    let mut closed = FailingWriter {
        budget: 10,
        kind: io::ErrorKind::BrokenPipe,
    };
    cli::run(args(), &mut closed, &mut io::sink()).unwrap();
    let mut full = FailingWriter {
        budget: 10,
        kind: io::ErrorKind::StorageFull,
    };
    let err = cli::run(args(), &mut full, &mut io::sink()).unwrap_err();
    assert!(matches!(err, CliError::Write(_)), "{err}");
}

/// `run`'s result, or a test failure after 30 s: a read blocked on a FIFO
/// must fail the test, not hang it.
fn within_30s<T: Send + 'static>(run: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(run()));
    receiver
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("still running after 30 s (blocked on a FIFO?)")
}

/// A FIFO, `/dev/zero` behind a symlink and a directory are refused at once
/// with an error naming the path, by the reader and by the command line,
/// instead of blocking for a writer or filling memory.
#[cfg(unix)]
#[test]
fn score_paths_that_are_no_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.txt");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    let zero = dir.path().join("zero.txt");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let cases = [
        (fifo, "a FIFO"),
        (zero, "a character device"),
        (dir.path().to_path_buf(), "a directory"),
    ];
    for (path, kind) in cases {
        let shown = path.to_str().unwrap().to_owned();
        let err = within_30s({
            let path = path.clone();
            move || read_score_file(path)
        })
        .unwrap_err();
        assert!(
            matches!(&err, MetricsError::ScoreFileNotRegular { file, kind: k } if *file == shown && k == &kind),
            "{err}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "score file {shown} is not a regular file but {kind}: "
            )),
            "{err}"
        );
        let test = path_arg("test_crlf.txt");
        let args = [
            vec!["--test", &shown, "--higher", "attack"],
            vec!["--dev", &shown, "--test", &test, "--higher", "bonafide"],
        ];
        for args in args {
            let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
            let (result, out, _) = within_30s(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_cli(&args)
            });
            let err = result.unwrap_err();
            assert!(
                matches!(
                    err,
                    CliError::Metrics(MetricsError::ScoreFileNotRegular { .. })
                ),
                "{err}"
            );
            assert_eq!(out, "");
        }
    }
}

/// A score file over [`MAX_SCORE_FILE_BYTES`] is refused by its size, with
/// an error naming it and the limit, without being read (the file here is
/// sparse: it takes no disk space).
#[test]
fn score_files_over_the_limit_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.txt");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(MAX_SCORE_FILE_BYTES + 1)
        .unwrap();
    let err = read_score_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            MetricsError::ScoreFileTooLarge {
                limit: MAX_SCORE_FILE_BYTES,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "score file {} is larger than 1073741824 bytes",
            path.display()
        )),
        "{err}"
    );
}

/// `--dev` naming the test file, by its path or another one, or a copy of it
/// (even with other line endings) is refused before any output: the
/// threshold would be chosen on test. Without `--dev` the test set's own EER
/// threshold is taken openly (`cli_without_dev_uses_the_test_eer`).
#[test]
fn cli_refuses_dev_that_is_the_test_file() {
    let test = path_arg("test_crlf.txt");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.txt");
    std::fs::copy(&test, &copy).unwrap();
    let lf_copy = dir.path().join("lf_copy.txt");
    let text = std::fs::read_to_string(&test).unwrap();
    std::fs::write(&lf_copy, text.replace("\r\n", "\n")).unwrap();
    // The same lines in reverse order (a sorted or shuffled copy).
    let reordered = dir.path().join("reordered.txt");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    std::fs::write(&reordered, lines.join("\n") + "\n").unwrap();
    let other_path = fixture("../scores/./test_crlf.txt");
    let cases = [
        (PathBuf::from(&test), "are the same file"),
        (other_path, "are the same file"),
        (copy, "hold the same scores"),
        (lf_copy, "hold the same scores"),
        (reordered, "hold the same scores"),
    ];
    for (dev, how) in cases {
        let dev = dev.to_str().unwrap();
        let args = ["--dev", dev, "--test", &test, "--higher", "bonafide"];
        let (result, out, log) = run_cli(&args);
        let err = result.unwrap_err();
        assert!(
            matches!(&err, CliError::DevIsTest { how: h, .. } if *h == how),
            "{dev}: {err}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "--dev {dev} and --test {test} {how}: the threshold would be chosen on the test \
                 scores themselves"
            )),
            "{err}"
        );
        assert_eq!((out.as_str(), log.as_str()), ("", ""), "{dev}");
    }
}
