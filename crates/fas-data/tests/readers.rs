//! Dataset readers on small generated trees: every list format, CRLF, blank
//! lines, duplicates, 112x112 and large images, and every bad-input case.

use fas_data::{
    read_folder, read_list, AttackKind, BadInputPolicy, Category, ClipTransform, Error, FileCheck,
    FrameNames, Label, LabelConvention, ListFormat, ListOptions, ListSpec, Loader, LoaderConfig,
    Media, VideoIdRule,
};
use std::path::Path;

fn write_jpeg(path: &Path, size: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let image = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    image.save(path).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const LIVE: &str = "UniAttackData/Data/live/east-asia/EA-001/real.rssdk/color/0070.jpg";
const PRINT: &str = "UniAttackData/Data/spoof/east-asia/EA-321/cloth-indoor/color/0070.jpg";
const REPLAY: &str = "UniAttackData/Data/spoof/africa/AF-002/screen-rs/color/0145.jpg";
const ADV: &str = "UniAttackData/Data/adv-attacks/ssah/ssah_africa-112x112/AF-001/0057.jpg";
const EDIT: &str = "UniAttackData/Data/DaGAN/africa_faces/AF-441-To-CA-330/27.jpg";

fn uniattack_tree(root: &Path) {
    write_jpeg(&root.join(LIVE), 112);
    write_jpeg(&root.join(PRINT), 720);
    write_jpeg(&root.join(REPLAY), 112);
    write_jpeg(&root.join(ADV), 112);
    write_jpeg(&root.join(EDIT), 112);
}

#[test]
fn uniattack_protocol_list_with_crlf_blank_lines_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    uniattack_tree(root);
    let list = root.join("UniAttackData/protocol/UniAttackData@p1_image_train.txt");
    let text =
        format!("{LIVE} 0\r\n{PRINT} 1\r\n{REPLAY} 1\r\n{ADV} 2\r\n{EDIT} 3\r\n{LIVE} 0\r\n\r\n\n");
    write(&list, &text);
    let options = ListOptions {
        check: FileCheck::Decode,
        ..Default::default()
    };
    let listing = read_list(&list, root, &ListFormat::UniattackProtocol, &options).unwrap();
    assert_eq!(listing.samples.len(), 6);
    assert_eq!(listing.duplicates, 1);
    assert!(listing.problems.is_empty());
    let labels: Vec<_> = listing
        .samples
        .iter()
        .map(|s| s.label.clone().unwrap())
        .collect();
    assert_eq!(labels[0], Label::BonaFide);
    assert_eq!(labels[1], Label::Attack(AttackKind::Print));
    assert_eq!(labels[2], Label::Attack(AttackKind::Replay));
    assert_eq!(
        labels[3],
        Label::Attack(AttackKind::Adversarial {
            method: Some("ssah".into())
        })
    );
    assert_eq!(
        labels[4],
        Label::Attack(AttackKind::Editing {
            method: Some("DaGAN".into())
        })
    );
    assert_eq!(
        listing.samples[0].video_id,
        "UniAttackData/Data/live/east-asia/EA-001/real.rssdk/color"
    );
    assert_eq!(listing.samples[0].origin.1, 1);
    assert_eq!(listing.samples[0].path, root.join(LIVE));
    let counts = listing.counts_by_category();
    assert_eq!(counts[&Category::Live], 2);
    assert_eq!(counts[&Category::Physical], 2);
    assert_eq!(counts[&Category::Adversarial], 1);
    assert_eq!(counts[&Category::Editing], 1);
}

#[test]
fn uniattack_video_list_points_at_frame_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    uniattack_tree(root);
    let frames_dir = "UniAttackData/Data/live/east-asia/EA-001/real.rssdk/color";
    write_jpeg(&root.join(frames_dir).join("0012.jpg"), 112);
    let list = root.join("video.txt");
    write(&list, &format!("{frames_dir} 0\n"));
    let listing = read_list(
        &list,
        root,
        &ListFormat::UniattackProtocolVideo,
        &ListOptions::default(),
    )
    .unwrap();
    assert_eq!(
        listing.samples[0].media,
        Media::FrameDir(FrameNames::AnyImage)
    );
    assert_eq!(listing.samples[0].video_id, frames_dir);
}

#[test]
fn challenge_lists_labelled_and_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("p1/train/000001.jpg"), 112);
    write_jpeg(&root.join("p1/train/000002.jpg"), 112);
    write_jpeg(&root.join("p1/dev/000001.jpg"), 112);
    write(
        &root.join("p1/train_label.txt"),
        "p1/train/000001.jpg 0\np1/train/000002.jpg 1\n",
    );
    write(&root.join("p1/dev.txt"), "p1/dev/000001.jpg\n");
    let train = read_list(
        &root.join("p1/train_label.txt"),
        root,
        &ListFormat::Challenge,
        &ListOptions::default(),
    )
    .unwrap();
    assert_eq!(train.samples[0].label, Some(Label::BonaFide));
    assert_eq!(
        train.samples[1].label,
        Some(Label::Attack(AttackKind::Unknown))
    );
    assert_eq!(train.samples[1].video_id, "p1/train/000002.jpg");
    let dev = read_list(
        &root.join("p1/dev.txt"),
        root,
        &ListFormat::ChallengeUnlabelled,
        &ListOptions::default(),
    )
    .unwrap();
    assert_eq!(dev.samples[0].label, None);
    assert_eq!(dev.samples[0].category(), Category::Unknown);
}

#[test]
fn binary_protocol_is_live_one_fake_zero_with_path_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    uniattack_tree(root);
    let list = root.join("Protocol/p1/train.txt");
    write_jpeg(&root.join("p1/train/000001.jpg"), 40);
    write_jpeg(&root.join("p1/train/000002.jpg"), 40);
    write(
        &list,
        &format!("/{LIVE} 1\n{REPLAY} 0\n{ADV} 0\np1/train/000001.jpg 1\np1/train/000002.jpg 0\n"),
    );
    let listing = read_list(&list, root, &ListFormat::Binary, &ListOptions::default()).unwrap();
    let ids: Vec<&str> = listing
        .samples
        .iter()
        .map(|s| s.video_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "UniAttackData/Data/live/east-asia/EA-001/real.rssdk/color",
            "UniAttackData/Data/spoof/africa/AF-002/screen-rs/color",
            ADV,
            "p1/train/000001.jpg",
            "p1/train/000002.jpg",
        ],
        "frames of a color folder share a video; other images are their own"
    );
    assert_eq!(listing.samples[0].label, Some(Label::BonaFide));
    assert_eq!(
        listing.samples[0].entry, LIVE,
        "leading / is stripped as FA3 does"
    );
    assert_eq!(
        listing.samples[1].label,
        Some(Label::Attack(AttackKind::Replay))
    );
    assert_eq!(listing.samples[2].category(), Category::Adversarial);
}

/// A JFSFDB video folder: seven face crops plus two maps that are not frames.
fn jfsfdb_video(dir: &Path) {
    for i in 1..=7 {
        write_jpeg(&dir.join(format!("Face_{i:02}.jpg")), 40);
    }
    // Not frames: a decode check or a frame choice touching them would fail.
    write(&dir.join("STmap.png"), "not an image");
    write(&dir.join("CWT_63.jpg"), "not an image");
}

#[test]
fn jfsfdb_lists_video_directories_with_one_real() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    jfsfdb_video(&root.join("SiW/live/001"));
    jfsfdb_video(&root.join("SiW/spoof/002"));
    let list = root.join("SiW_train.txt");
    write(&list, "SiW/live/001 1\nSiW/spoof/002 0\n");
    let options = ListOptions {
        check: FileCheck::Decode,
        ..Default::default()
    };
    let listing = read_list(&list, root, &ListFormat::Jfsfdb, &options).unwrap();
    assert!(listing.problems.is_empty(), "{:?}", listing.problems);
    assert_eq!(listing.samples[0].label, Some(Label::BonaFide));
    assert_eq!(
        listing.samples[1].label,
        Some(Label::Attack(AttackKind::Unknown)),
        "no UniAttackData path hints on JFSFDB"
    );
    assert!(listing
        .samples
        .iter()
        .all(|s| s.media == Media::FrameDir(FrameNames::JfsfdbFace)));
    // CFB evaluation: the first and last face crop of each video.
    let loader = Loader::new(
        listing.samples,
        LoaderConfig {
            transform: ClipTransform {
                size: 16,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let live = root.join("SiW/live/001");
    let spoof = root.join("SiW/spoof/002");
    assert_eq!(
        batch.paths,
        [
            live.join("Face_01.jpg"),
            live.join("Face_07.jpg"),
            spoof.join("Face_01.jpg"),
            spoof.join("Face_07.jpg")
        ]
    );
}

#[test]
fn generic_list_with_custom_convention() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("a.jpg"), 112);
    write_jpeg(&root.join("b/c.jpg"), 112);
    let list = root.join("list.txt");
    write(&list, "a.jpg 7\nb/c.jpg 9\n");
    let spec = ListSpec {
        convention: LabelConvention::Custom(vec![
            (7, Label::BonaFide),
            (9, Label::Attack(AttackKind::Replay)),
        ]),
        video_id: VideoIdRule::ParentDir,
        ..Default::default()
    };
    let listing = read_list(
        &list,
        root,
        &ListFormat::Generic(spec),
        &ListOptions::default(),
    )
    .unwrap();
    assert_eq!(
        listing.samples[1].label,
        Some(Label::Attack(AttackKind::Replay))
    );
    assert_eq!(listing.samples[1].video_id, "b");
}

#[test]
fn generic_lists_take_no_path_hints_and_accept_a_bom() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("print_batch/screen-1/a.jpg"), 40);
    let list = root.join("list.txt");
    write(&list, "\u{feff}print_batch/screen-1/a.jpg 1\n");
    let listing = read_list(
        &list,
        root,
        &ListFormat::Generic(ListSpec::default()),
        &ListOptions::default(),
    )
    .unwrap();
    assert_eq!(listing.samples[0].entry, "print_batch/screen-1/a.jpg");
    assert_eq!(
        listing.samples[0].label,
        Some(Label::Attack(AttackKind::Physical))
    );
}

/// PIL reads JPEGs with data after the end-of-image marker (camera
/// trailers); a file cut inside its scan is still rejected.
#[test]
fn jpeg_with_trailer_decodes_and_cut_jpeg_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("good.jpg"), 64);
    let good = std::fs::read(root.join("good.jpg")).unwrap();
    let mut trailer = good.clone();
    trailer.extend_from_slice(b"\xFF\xDA\x00\x02 camera trailer \x00\x00\xFF");
    std::fs::write(root.join("trailer.jpg"), &trailer).unwrap();
    std::fs::write(root.join("cut.jpg"), &good[..good.len() - 40]).unwrap();
    std::fs::write(root.join("no_eoi.jpg"), &good[..good.len() - 2]).unwrap();
    assert!(fas_data::image_io::load_image(&root.join("trailer.jpg")).is_ok());
    for name in ["cut.jpg", "no_eoi.jpg"] {
        let err = fas_data::image_io::load_image(&root.join(name)).unwrap_err();
        assert!(err.to_string().contains("truncated JPEG"), "{name}: {err}");
    }
}

#[cfg(unix)]
#[test]
fn image_folder_does_not_follow_a_link_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("live/a.jpg"), 40);
    std::os::unix::fs::symlink(root.join("live"), root.join("live/loop")).unwrap();
    let listing = read_folder(root, &ListOptions::default()).unwrap();
    assert_eq!(listing.samples.len(), 1);
}

#[test]
fn image_folder_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("live/s1/a.jpg"), 112);
    write_jpeg(&root.join("print/b.jpg"), 112);
    write_jpeg(&root.join("adversarial/fgsm/c.png"), 112);
    write(&root.join("live/notes.txt"), "ignored");
    let listing = read_folder(root, &ListOptions::default()).unwrap();
    let labels: Vec<_> = listing
        .samples
        .iter()
        .map(|s| s.label.clone().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            Label::Attack(AttackKind::Adversarial {
                method: Some("fgsm".into())
            }),
            Label::BonaFide,
            Label::Attack(AttackKind::Print)
        ]
    );
    write_jpeg(&root.join("selfies/d.jpg"), 112);
    let err = read_folder(root, &ListOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown category folder \"selfies\""), "{err}");
}

/// Every bad-input case in one list: all are reported at once with file:line.
fn broken_tree(root: &Path) -> std::path::PathBuf {
    uniattack_tree(root);
    std::fs::write(root.join("garbage.jpg"), b"this is not an image").unwrap();
    let good = std::fs::read(root.join(LIVE)).unwrap();
    std::fs::write(root.join("truncated.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(root.join("empty.png"), b"").unwrap();
    let list = root.join("data/p1/train.txt");
    let text = [
        format!("{LIVE} 0"),
        "foo".to_string(),
        format!("{PRINT} 7"),
        format!("{PRINT} one"),
        "missing/file.jpg 0".to_string(),
        "garbage.jpg 1".to_string(),
        "truncated.jpg 1".to_string(),
        "empty.png 1".to_string(),
        format!("{LIVE} 2"),
        format!("{ADV} 2 extra"),
        format!("{EDIT} 3"),
    ]
    .join("\n");
    write(&list, &text);
    list
}

#[test]
fn bad_input_fails_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let list = broken_tree(dir.path());
    let options = ListOptions {
        check: FileCheck::Decode,
        ..Default::default()
    };
    let err = read_list(&list, dir.path(), &ListFormat::UniattackProtocol, &options).unwrap_err();
    let Error::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err}")
    };
    let lines: Vec<_> = problems.iter().map(|p| p.line.unwrap()).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let text = err.to_string();
    let file = list.display();
    assert!(
        text.contains(&format!(
            "protocol file {file} line 2: expected \"<path> <label>\", got \"foo\""
        )),
        "{text}"
    );
    assert!(text.contains("line 3: unknown label 7"), "{text}");
    assert!(
        text.contains("line 4: label \"one\" is not an integer"),
        "{text}"
    );
    assert!(text.contains("missing/file.jpg: file not found"), "{text}");
    assert!(text.contains("garbage.jpg: cannot decode"), "{text}");
    assert!(text.contains("truncated.jpg: truncated JPEG"), "{text}");
    assert!(text.contains("empty.png: empty file"), "{text}");
    assert!(text.contains("line 9: \"UniAttackData/Data/live"), "{text}");
    assert!(
        text.contains("listed on line 1 with another label"),
        "{text}"
    );
}

#[test]
fn bad_input_skip_keeps_valid_samples_and_counts_problems() {
    let dir = tempfile::tempdir().unwrap();
    let list = broken_tree(dir.path());
    let options = ListOptions {
        policy: BadInputPolicy::Skip,
        check: FileCheck::Decode,
        ..Default::default()
    };
    let listing = read_list(&list, dir.path(), &ListFormat::UniattackProtocol, &options).unwrap();
    assert_eq!(listing.samples.len(), 2);
    assert_eq!(listing.problems.len(), 9);
    // Existence checks alone do not open files: the three unreadable images pass.
    let options = ListOptions {
        policy: BadInputPolicy::Skip,
        check: FileCheck::Exists,
        ..Default::default()
    };
    let listing = read_list(&list, dir.path(), &ListFormat::UniattackProtocol, &options).unwrap();
    assert_eq!(listing.samples.len(), 5);
}

#[test]
fn missing_list_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_list(
        &dir.path().join("nope.txt"),
        dir.path(),
        &ListFormat::Binary,
        &ListOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("nope.txt"));
}

/// Without decoding, a listed entry that is a directory, a FIFO or a link
/// loop is reported as what it is, not as a file not found.
#[cfg(unix)]
#[test]
fn listed_entries_that_are_no_files_say_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let entry = |name: &str| format!("UniAttackData/Data/live/x/{name}");
    std::fs::create_dir_all(root.join(entry("folder.jpg"))).unwrap();
    let fifo = root.join(entry("fifo.jpg"));
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink(root.join(entry("loop.jpg")), root.join(entry("loop.jpg"))).unwrap();
    let list = root.join("UniAttackData/protocol/list.txt");
    write(
        &list,
        &["folder.jpg", "fifo.jpg", "loop.jpg", "missing.jpg"]
            .map(|name| format!("{} 0\n", entry(name)))
            .concat(),
    );
    let err = read_list(
        &list,
        root,
        &ListFormat::UniattackProtocol,
        &ListOptions::default(),
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "folder.jpg: a directory, not an image file",
        "fifo.jpg: not a regular file",
        "loop.jpg: cannot read:",
        "missing.jpg: file not found",
    ] {
        assert!(err.contains(expected), "{expected}: {err}");
    }
}
