//! The list and folder readers under arbitrary input (seeded ChaCha8
//! streams): random bytes, random mixes of good, bad and hostile lines, and
//! random folder trees never panic, finish quickly, and every accepted
//! sample is a listed file, listed once per line that names it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fas_data::{read_folder, read_list, BadInputPolicy, FileCheck, ListFormat, ListOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn skip() -> ListOptions {
    ListOptions {
        policy: BadInputPolicy::Skip,
        check: FileCheck::Exists,
        ..ListOptions::default()
    }
}

/// A data root with `n` real (tiny, undecoded) files `d/<i>.jpg`.
fn root_with_files(n: usize) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data/d")).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("d/{i}.jpg")).collect();
    for name in &names {
        std::fs::write(dir.path().join("data").join(name), b"x").unwrap();
    }
    (dir, names)
}

#[test]
fn random_bytes_never_panic() {
    let (dir, _) = root_with_files(3);
    let root = dir.path().join("data");
    let list = dir.path().join("list.txt");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for round in 0..300 {
        let n = rng.random_range(0..3_000);
        let bytes: Vec<u8> = (0..n)
            .map(|_| match rng.random_range(0..5) {
                0 => b'\n',
                1 => b' ',
                2 => b'/',
                _ => rng.random(),
            })
            .collect();
        std::fs::write(&list, &bytes).unwrap();
        let format = if round % 2 == 0 {
            ListFormat::UniattackProtocol
        } else {
            ListFormat::Jfsfdb
        };
        let start = Instant::now();
        let _ = read_list(&list, &root, &format, &skip());
        let _ = read_list(&list, &root, &format, &ListOptions::default());
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}

fn random_line(rng: &mut ChaCha8Rng, names: &[String]) -> String {
    let name = &names[rng.random_range(0..names.len())];
    match rng.random_range(0..12) {
        0 => format!("{name} 0"),
        1 => format!("./{name} 1"),
        2 => format!("{} 2", name.replace('/', "//")),
        3 => format!("/{name} 3\r"),
        4 => format!("../{name} 0"),
        5 => format!("{name} 9"),
        6 => name.to_string(),
        7 => "d/missing.jpg 0".to_string(),
        8 => String::new(),
        9 => format!("{name} x"),
        10 => "\u{feff}".to_string(),
        _ => format!("d/{} 0", "y".repeat(rng.random_range(1..50_000))),
    }
}

/// Under `Skip`, every accepted sample is a real file below the root, named
/// by at least one line, and never twice by lines with different labels.
#[test]
fn line_mixes_accept_only_listed_files_below_the_root() {
    let (dir, names) = root_with_files(6);
    let root = dir.path().join("data");
    let list = dir.path().join("list.txt");
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // Listings with samples whose checks ran: a reader that refused
    // everything would otherwise pass with nothing checked.
    let mut checked = 0;
    for _ in 0..200 {
        let lines: Vec<String> = (0..rng.random_range(1..30))
            .map(|_| random_line(&mut rng, &names))
            .collect();
        std::fs::write(&list, lines.join("\n")).unwrap();
        let start = Instant::now();
        let result = read_list(&list, &root, &ListFormat::UniattackProtocol, &skip());
        assert!(start.elapsed() < Duration::from_secs(5));
        let Ok(listing) = result else { continue };
        checked += usize::from(!listing.samples.is_empty());
        assert!(listing.samples.len() <= lines.len());
        let mut labels_of = std::collections::HashMap::new();
        for sample in &listing.samples {
            assert!(sample.path.starts_with(&root), "{}", sample.path.display());
            assert!(sample.path.is_file(), "{}", sample.path.display());
            let (_, line) = &sample.origin;
            assert!(
                lines[line - 1].contains(sample.entry.trim_start_matches("./"))
                    || lines[line - 1].contains(&sample.entry)
            );
            let previous = labels_of.insert(sample.path.clone(), sample.label.clone());
            assert!(previous.is_none() || previous == Some(sample.label.clone()));
        }
        // Every sample from a distinct line.
        let origins: HashSet<usize> = listing.samples.iter().map(|s| s.origin.1).collect();
        assert_eq!(origins.len(), listing.samples.len());
    }
    // 182 of the 200 with this seed.
    assert!(checked > 150, "only {checked} of 200 lists gave samples");
}

/// Random trees of category folders, files, unknown folders and links:
/// each accepted sample is a JPEG or PNG file below the root, once.
#[cfg(unix)]
#[test]
fn random_folder_trees_never_panic_and_list_files_once() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let folders = [
        "live",
        "print",
        "spoof",
        "adversarial/fgsm",
        "odd",
        "live/deep/er",
    ];
    let files = ["a.jpg", "b.PNG", "c.webp", "d.txt", "e.jpeg", ".hidden.jpg"];
    let mut checked = 0;
    for _ in 0..60 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mut made: Vec<PathBuf> = vec![root.clone()];
        for _ in 0..rng.random_range(1..15) {
            let folder = root.join(folders[rng.random_range(0..folders.len())]);
            std::fs::create_dir_all(&folder).unwrap();
            made.push(folder.clone());
            let file = folder.join(files[rng.random_range(0..files.len())]);
            std::fs::write(&file, b"x").unwrap();
            if rng.random_bool(0.3) {
                let target = &made[rng.random_range(0..made.len())];
                let _ = std::os::unix::fs::symlink(
                    target,
                    folder.join(format!("link{}", rng.random::<u8>())),
                );
            }
        }
        let start = Instant::now();
        let result = read_folder(&root, &skip());
        assert!(start.elapsed() < Duration::from_secs(5));
        let Ok(listing) = result else { continue };
        checked += usize::from(!listing.samples.is_empty());
        let mut seen = HashSet::new();
        for sample in &listing.samples {
            let path: &Path = &sample.path;
            assert!(path.starts_with(&root) && fas_data::image_io::is_image_file(path));
            let file = std::fs::canonicalize(path).unwrap();
            assert!(seen.insert(file), "{} listed twice", path.display());
        }
    }
    // 57 of the 60 with this seed.
    assert!(checked > 45, "only {checked} of 60 trees gave samples");
}
