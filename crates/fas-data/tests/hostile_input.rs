//! Input a hostile or careless user gives the readers: empty lists, one file
//! spelled two ways, entries climbing out of the data root, formats the
//! decoder lacks, links, JPEG headers that lie about their size, huge lines,
//! non-UTF-8 paths in reports, and a dataset written over an existing one.

use fas_data::synth::{write_dataset, write_dataset_over, SynthConfig};
use fas_data::{read_folder, read_list, Error, FileCheck, ListFormat, ListOptions, Problem};
use std::path::Path;

fn write_jpeg(path: &Path, size: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, 90])
    })
    .save(path)
    .unwrap();
}

fn list(root: &Path, text: &str) -> std::path::PathBuf {
    let path = root.join("list.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn read(root: &Path, text: &str, options: &ListOptions) -> fas_data::Result<fas_data::Listing> {
    read_list(
        &list(root, text),
        root,
        &ListFormat::UniattackProtocol,
        options,
    )
}

/// A binary file or one far too large for a list is refused whole, not
/// read into memory and reported line by line; a byte-order mark starting
/// a later line (lists concatenated with `cat`) is not part of its entry.
#[test]
fn files_that_are_not_lists_and_concatenated_lists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let refused = |path: &Path| {
        read_list(
            path,
            root,
            &ListFormat::UniattackProtocol,
            &ListOptions::default(),
        )
        .unwrap_err()
        .to_string()
    };
    let binary = root.join("archive.txt");
    std::fs::write(&binary, b"PK\x03\x04\0\0 binary").unwrap();
    let err = refused(&binary);
    assert!(
        err.contains("archive.txt") && err.contains("NUL byte"),
        "{err}"
    );
    let huge = root.join("huge.txt");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(fas_data::protocol::MAX_LIST_BYTES + 1)
        .unwrap();
    let err = refused(&huge);
    assert!(
        err.contains("huge.txt") && err.contains("right file"),
        "{err}"
    );

    write_jpeg(&root.join("a/live.jpg"), 8);
    write_jpeg(&root.join("b/print.jpg"), 8);
    let text = "\u{feff}a/live.jpg 0\n\u{feff}b/print.jpg 1\n";
    let listing = read(root, text, &ListOptions::default()).unwrap();
    let entries: Vec<&str> = listing.samples.iter().map(|s| s.entry.as_str()).collect();
    assert_eq!(entries, ["a/live.jpg", "b/print.jpg"]);
}

/// A FIFO named like a list or an image is refused as not a regular file,
/// not read (which would block until something writes to it).
#[cfg(unix)]
#[test]
fn fifos_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let fifo = |path: &Path| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
    };
    let list_fifo = root.join("list-fifo.txt");
    fifo(&list_fifo);
    let err = read_list(
        &list_fifo,
        root,
        &ListFormat::UniattackProtocol,
        &ListOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    write_jpeg(&root.join("layout/live/good.jpg"), 16);
    fifo(&root.join("layout/print/pipe.jpg"));
    let options = ListOptions {
        check: FileCheck::Decode,
        policy: fas_data::BadInputPolicy::Skip,
        ..ListOptions::default()
    };
    let listing = read_folder(&root.join("layout"), &options).unwrap();
    assert_eq!(listing.samples.len(), 1);
    assert!(
        listing
            .problems
            .iter()
            .any(|p| p.to_string().contains("not a regular file")),
        "{:?}",
        listing.problems
    );
}

/// A folder layout with no decodable image is an error that lists what was
/// passed over, as an empty list is, under either policy.
#[test]
fn a_folder_without_images_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("live")).unwrap();
    std::fs::write(root.join("live/face.webp"), b"x").unwrap();
    for policy in [
        fas_data::BadInputPolicy::Fail,
        fas_data::BadInputPolicy::Skip,
    ] {
        let options = ListOptions {
            policy,
            ..ListOptions::default()
        };
        let err = read_folder(root, &options).unwrap_err().to_string();
        assert!(
            err.contains("no JPEG or PNG image") && err.contains("face.webp"),
            "{err}"
        );
    }
}

#[test]
fn empty_and_blank_lists_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "\n\n", " \r\n\t\n", "\u{feff}"] {
        let err = read(dir.path(), text, &ListOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{text:?}: {err}");
        assert!(err.to_string().contains("no entries"), "{err}");
    }
}

/// `./a.jpg`, `a.jpg` and `x/../a.jpg` are one file: listed with the same
/// label they are a counted duplicate, with another label a conflict.
#[test]
fn one_file_spelled_two_ways_is_one_sample() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("d/a.jpg"), 16);
    let listing = read(
        root,
        "d/a.jpg 0\n./d/a.jpg 0\nd//x/../a.jpg 0\n",
        &ListOptions::default(),
    )
    .unwrap();
    assert_eq!((listing.samples.len(), listing.duplicates), (3, 2));
    assert!(listing
        .samples
        .iter()
        .all(|s| s.path == root.join("d/a.jpg")));
    // Score files keep the entries as written.
    assert_eq!(listing.samples[1].entry, "./d/a.jpg");
    let err = read(root, "d/a.jpg 0\n./d/a.jpg 1\n", &ListOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("line 2") && err.to_string().contains("another label"),
        "{err}"
    );
}

#[test]
fn entries_may_not_leave_the_data_root_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    write_jpeg(&dir.path().join("secret/x.jpg"), 16);
    std::fs::create_dir_all(&root).unwrap();
    for entry in [
        "../secret/x.jpg",
        "a/../../secret/x.jpg",
        "/../secret/x.jpg",
    ] {
        let err = read(&root, &format!("{entry} 0\n"), &ListOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("leads out of the data root"),
            "{entry}: {err}"
        );
    }
    let allowed = ListOptions {
        allow_outside_root: true,
        ..ListOptions::default()
    };
    let listing = read(&root, "../secret/x.jpg 0\n", &allowed).unwrap();
    assert_eq!(listing.samples[0].path, root.join("../secret/x.jpg"));
}

/// Linked category folders are followed; WebP and BMP files, and a link
/// cycle, are reported instead of silently dropped.
#[cfg(unix)]
#[test]
fn folder_layout_follows_links_and_reports_what_it_passes_over() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_jpeg(&root.join("live/a.jpg"), 16);
    write_jpeg(&dir.path().join("elsewhere/b.jpg"), 16);
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("print")).unwrap();
    std::fs::write(root.join("live/c.webp"), b"RIFF....WEBP").unwrap();
    std::fs::write(root.join("live/d.BMP"), b"BM").unwrap();
    std::fs::write(root.join("live/notes.txt"), b"not an image").unwrap();
    std::os::unix::fs::symlink(&root, root.join("live/loop")).unwrap();
    let listing = read_folder(&root, &ListOptions::default()).unwrap();
    let entries: Vec<&str> = listing.samples.iter().map(|s| s.entry.as_str()).collect();
    assert_eq!(entries, vec!["live/a.jpg", "print/b.jpg"]);
    let ignored: Vec<String> = listing.ignored.iter().map(|p| p.to_string()).collect();
    assert_eq!(ignored.len(), 3, "{ignored:?}");
    assert!(ignored
        .iter()
        .any(|m| m.contains("c.webp") && m.contains("JPEG and PNG only")));
    assert!(ignored.iter().any(|m| m.contains("d.BMP")));
    assert!(ignored
        .iter()
        .any(|m| m.contains("loop") && m.contains("cycle")));
}

/// Runs `job` on another thread and fails if it has not finished within
/// `limit`, so a test of something that used to hang fails instead.
fn within<T: Send + 'static>(
    limit: std::time::Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(job()));
    result
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// A ladder of directories where each level links to the one below twice
/// (`l<i>/a` and `l<i>/b` -> `l<i-1>`) reaches the bottom by 2^20 paths:
/// each directory is walked once, so the listing takes milliseconds (walking
/// every path took hours) and each image is listed once.
#[cfg(unix)]
#[test]
fn folder_layout_walks_a_directory_shared_by_links_once() {
    let dir = tempfile::tempdir().unwrap();
    let levels = 20;
    let ladder = dir.path().join("ladder");
    write_jpeg(&ladder.join("l0/bottom.jpg"), 16);
    for level in 1..=levels {
        let here = ladder.join(format!("l{level}"));
        write_jpeg(&here.join(format!("level{level}.jpg")), 16);
        let below = format!("../l{}", level - 1);
        std::os::unix::fs::symlink(&below, here.join("a")).unwrap();
        std::os::unix::fs::symlink(&below, here.join("b")).unwrap();
    }
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("live")).unwrap();
    std::os::unix::fs::symlink(ladder.join(format!("l{levels}")), root.join("live/shared"))
        .unwrap();
    let listing = within(std::time::Duration::from_secs(10), move || {
        read_folder(&root, &ListOptions::default())
    })
    .unwrap();
    assert_eq!(listing.samples.len(), levels + 1);
    assert_eq!(listing.duplicates, 0);
    let mut names: Vec<&str> = listing
        .samples
        .iter()
        .map(|s| s.path.file_name().unwrap().to_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), levels + 1, "{names:?}");
    // The `b` of every level leads to a directory already walked through `a`.
    let shared: Vec<String> = listing.ignored.iter().map(|p| p.to_string()).collect();
    assert_eq!(shared.len(), levels, "{shared:?}");
    assert!(shared
        .iter()
        .all(|m| m.contains("/b: the same directory as") && m.contains("listed once")));
}

/// A directory reached through links under two categories is walked under
/// each, so its files are a problem (one file, two categories) whichever
/// path sorts first; a path of no category that sorts first does not hide
/// the category's own folder. A link to a directory that holds the root (a
/// link to `/`, as `/proc/<pid>/root` is) is a cycle.
#[cfg(unix)]
#[test]
fn folder_layout_directories_under_two_paths_and_links_above_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write_jpeg(&root.join("live/a.jpg"), 16);
    write_jpeg(&dir.path().join("outside/b.jpg"), 16);
    std::os::unix::fs::symlink(dir.path(), root.join("live/up")).unwrap();
    let listing = read_folder(&root, &ListOptions::default()).unwrap();
    let entries: Vec<&str> = listing.samples.iter().map(|s| s.entry.as_str()).collect();
    assert_eq!(entries, ["live/a.jpg"]);
    assert!(
        listing.ignored[0].to_string().contains("cycle"),
        "{:?}",
        listing.ignored
    );

    // `all` (no category) sorts before `live` and links to it: its image is
    // a problem, live's is still listed.
    std::os::unix::fs::symlink(root.join("live"), root.join("all")).unwrap();
    let skip = ListOptions {
        policy: fas_data::BadInputPolicy::Skip,
        ..ListOptions::default()
    };
    let listing = read_folder(&root, &skip).unwrap();
    let entries: Vec<&str> = listing.samples.iter().map(|s| s.entry.as_str()).collect();
    assert_eq!(entries, ["live/a.jpg"]);
    assert!(
        listing.problems[0]
            .to_string()
            .contains("unknown category folder \"all\""),
        "{:?}",
        listing.problems
    );
    std::fs::remove_file(root.join("all")).unwrap();

    std::os::unix::fs::symlink(root.join("live"), root.join("print")).unwrap();
    let err = read_folder(&root, &ListOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the same file as") && err.contains("under another category"),
        "{err}"
    );
}

/// A JPEG whose header claims 4000 x 4000 pixels but holds a 16 x 16 scan
/// fails the decode check instead of decoding to grey.
#[test]
fn jpeg_header_claiming_more_pixels_than_it_holds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.jpg");
    write_jpeg(&path, 16);
    let mut bytes = std::fs::read(&path).unwrap();
    let sof = marker_at(&bytes, 0xC0);
    // FF C0, length (2), precision (1), height (2), width (2).
    bytes[sof + 5..sof + 9].copy_from_slice(&[0x0F, 0xA0, 0x0F, 0xA0]);
    std::fs::write(&path, &bytes).unwrap();
    let err = fas_data::image_io::load_image(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4000x4000") && err.contains("liar.jpg"),
        "{err}"
    );
    write_jpeg(&root_file(dir.path()), 16);
    let text = format!(
        "{} 0\nliar.jpg 0\n",
        root_file(dir.path()).file_name().unwrap().to_str().unwrap()
    );
    let options = ListOptions {
        check: FileCheck::Decode,
        ..ListOptions::default()
    };
    let err = read(dir.path(), &text, &options).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("claims"), "{err}");
}

/// A JPEG whose scan data was overwritten in the middle (garbage holding an
/// `FF` byte, as almost any few dozen random bytes do) fails the decode
/// check with an error naming the damage, where the lenient decoder would
/// return wrong pixels; the undamaged file decodes.
#[test]
fn jpeg_with_a_damaged_scan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.jpg");
    write_jpeg(&path, 64);
    assert!(fas_data::image_io::load_image(&path).is_ok());
    let mut bytes = std::fs::read(&path).unwrap();
    let sos = marker_at(&bytes, 0xDA);
    let middle = sos + (bytes.len() - sos) / 2;
    let garbage = [0x3C, 0x91, 0xFF, 0x47, 0x10, 0xE2, 0x7F, 0x05];
    bytes[middle..middle + garbage.len()].copy_from_slice(&garbage);
    std::fs::write(&path, &bytes).unwrap();
    let err = fas_data::image_io::load_image(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("damaged.jpg") && err.contains("corrupt JPEG") && err.contains("FF 47"),
        "{err}"
    );
}

/// Scan data damaged without any stray marker (16 bytes cut from the
/// middle, no `FF` among them, the end marker intact) decodes to wrong
/// pixels, so the lenient loader takes it; the dataset's decode check walks
/// the scan and refuses the file on its line.
#[test]
fn jpeg_scan_damage_without_markers_fails_the_decode_check() {
    let dir = tempfile::tempdir().unwrap();
    write_jpeg(&root_file(dir.path()), 64);
    let path = dir.path().join("cut.jpg");
    write_jpeg(&path, 64);
    let mut bytes = std::fs::read(&path).unwrap();
    let sos = marker_at(&bytes, 0xDA);
    let mut middle = sos + (bytes.len() - sos) / 2;
    while bytes[middle - 1..middle + 16].contains(&0xFF) {
        middle += 1;
    }
    bytes.drain(middle..middle + 16);
    std::fs::write(&path, &bytes).unwrap();
    assert!(fas_data::image_io::load_image(&path).is_ok());
    let options = ListOptions {
        check: FileCheck::Decode,
        ..ListOptions::default()
    };
    let err = read(dir.path(), "ok.jpg 0\ncut.jpg 0\n", &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("corrupt JPEG") && err.contains("MCU"),
        "{err}"
    );
}

/// Offset of the first `FF marker` in `bytes`.
fn marker_at(bytes: &[u8], marker: u8) -> usize {
    bytes
        .windows(2)
        .position(|w| w == [0xFF, marker])
        .unwrap_or_else(|| panic!("no FF {marker:02X}"))
}

fn root_file(dir: &Path) -> std::path::PathBuf {
    dir.join("ok.jpg")
}

#[test]
fn errors_quote_a_huge_line_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let line = format!("{} 0 extra\n", "x".repeat(20_000_000));
    let err = read(dir.path(), &line, &ListOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.len() < 2_000, "message of {} bytes", err.len());
    assert!(err.contains("bytes)"), "{}", &err[..200]);

    // A well-formed line whose entry is huge: the missing file's problem
    // quotes the entry briefly too.
    let line = format!("{}.jpg 0\n", "y".repeat(10_000_000));
    let err = read(dir.path(), &line, &ListOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.len() < 2_000, "message of {} bytes", err.len());
    assert!(err.contains("bytes)"), "{}", &err[..200]);
}

/// A report naming a non-UTF-8 path still serialises.
#[cfg(unix)]
#[test]
fn problems_with_non_utf8_paths_serialise() {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"bad\xFFname.jpg"));
    let problem = Problem::in_file(path, "file not found");
    let json = serde_json::to_string(&[problem]).unwrap();
    assert!(json.contains("bad\u{FFFD}name.jpg"), "{json}");
}

/// A dataset is not written over a non-empty directory, unless asked; the
/// lists then replace those of the same names.
#[test]
fn synthetic_dataset_refuses_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        subjects: 5,
        image_size: 32,
        ..SynthConfig::default()
    };
    write_dataset(dir.path(), &config).unwrap();
    let list = dir
        .path()
        .join("UniAttackData/protocol/UniAttackData@p1_image_train.txt");
    let before = std::fs::read(&list).unwrap();
    let err = write_dataset(
        dir.path(),
        &SynthConfig {
            seed: 3,
            ..config.clone()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(&list).unwrap(), before);
    write_dataset_over(dir.path(), &SynthConfig { seed: 3, ..config }).unwrap();
    assert_ne!(std::fs::read(&list).unwrap(), before);
}
