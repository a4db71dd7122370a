//! The unpacker on any bytes, as tar, tar.gz (the bytes as they are, and gzipped) and
//! zip: it may refuse, but never panics, never creates or writes anything outside the
//! release directory, and never leaves a symlink in it that resolves outside.
#![no_main]

use deployctl::agent::unpack::{unpack, UnpackOptions};
use deployctl::api::ArtifactFormat;
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Small limits keep each run fast; the limits themselves are part of what is fuzzed.
const OPTS: UnpackOptions = UnpackOptions {
    max_unpacked_bytes: 1 << 20,
    max_entries: 1000,
    preserve_setid: false,
};

fuzz_target!(|data: &[u8]| {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("writing to a Vec cannot fail");
    let gzipped = gz.finish().expect("writing to a Vec cannot fail");
    check(ArtifactFormat::Tar, data);
    check(ArtifactFormat::TarGz, &gzipped);
    check(ArtifactFormat::TarGz, data);
    check(ArtifactFormat::Zip, data);
});

/// Unpacks `bytes` in a fresh scratch dir holding the artifact, `releases/` and an empty
/// canary dir `outside/`, then checks that nothing else appeared there.
fn check(format: ArtifactFormat, bytes: &[u8]) {
    let scratch = tempfile::tempdir().expect("a temp dir");
    let root = scratch.path();
    fs::create_dir(root.join("outside")).expect("a fresh temp dir");
    fs::write(root.join("artifact"), bytes).expect("a fresh temp dir");
    let res = unpack(
        &root.join("artifact"),
        format,
        "app.bin",
        &root.join("releases"),
        "1.0",
        &OPTS,
    );
    assert_eq!(
        names(root),
        ["artifact", "outside", "releases"],
        "{format:?}"
    );
    assert!(
        names(&root.join("outside")).is_empty(),
        "{format:?}: canary touched"
    );
    match res {
        Ok(dir) => {
            assert_eq!(names(&root.join("releases")), ["1.0"], "{format:?}");
            let real = dir.canonicalize().expect("the release dir exists");
            assert_links_inside(&dir, &real);
        }
        Err(e) => {
            assert!(names(&root.join("releases")).is_empty(), "{format:?}: {e}");
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("a dir of the scratch layout")
        .map(|e| {
            e.expect("a readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Every symlink beneath `dir` resolves (if at all) inside `release`. Walks without
/// following links.
fn assert_links_inside(dir: &Path, release: &Path) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue; // a directory mode may forbid reading; its links were checked inside
        };
        for e in entries {
            let path = e.expect("a readable entry").path();
            let meta = fs::symlink_metadata(&path).expect("an entry just listed");
            if meta.is_dir() {
                pending.push(path);
            } else if meta.file_type().is_symlink() {
                if let Ok(to) = path.canonicalize() {
                    assert!(
                        to.starts_with(release),
                        "{} resolves to {} outside the release",
                        path.display(),
                        to.display()
                    );
                }
            }
        }
    }
}
