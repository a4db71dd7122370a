//! Unpacks archives built here (tar, tar.gz, zip; raw headers where the builders refuse)
//! and checks what lands on disk, inside the release and outside it.

use super::*;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

/// One tar entry: path, type, link target, data, mode.
type TarEntry<'a> = (&'a str, tar::EntryType, Option<&'a str>, &'a [u8], u32);

/// Builds a tar with raw headers so that unsafe paths can be written at all.
fn tar_of(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, link, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        // Write the name bytes directly: `set_path` refuses `..` and absolute paths.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            let ln = &mut h.as_old_mut().linkname;
            ln[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, *data).expect("appending to a Vec cannot fail");
    }
    b.into_inner().expect("finishing a Vec cannot fail")
}

fn tar_with(entries: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
    let with_mode: Vec<TarEntry> = entries
        .iter()
        .map(|(p, k, l, d)| (*p, *k, *l, *d, 0o644))
        .collect();
    tar_of(&with_mode)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}

/// One zip entry: name, what it is, mode.
enum Zipped<'a> {
    File(&'a str, &'a [u8], Option<u32>),
    Link(&'a str, &'a str),
}

fn zip_of(entries: &[Zipped]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for e in entries {
        match e {
            Zipped::File(name, data, mode) => {
                let mut opts = zip::write::SimpleFileOptions::default();
                if let Some(m) = mode {
                    opts = opts.unix_permissions(*m);
                }
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
            Zipped::Link(name, target) => w
                .add_symlink(*name, *target, zip::write::SimpleFileOptions::default())
                .unwrap(),
        }
    }
    w.finish().unwrap().into_inner()
}

/// Sets the unix mode of every entry in the zip's central directory (the writer keeps
/// only the permission bits, so set-id modes need this).
fn with_zip_mode(mut zip: Vec<u8>, mode: u32) -> Vec<u8> {
    let mut i = 0;
    while i + 46 <= zip.len() {
        if zip[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] {
            zip[i + 5] = 3; // made by: unix
            zip[i + 38..i + 42].copy_from_slice(&(mode << 16).to_le_bytes());
            i += 46;
        } else {
            i += 1;
        }
    }
    zip
}

fn zip_with(entries: &[(&str, Option<u32>, &[u8])]) -> Vec<u8> {
    let files: Vec<Zipped> = entries
        .iter()
        .map(|(n, m, d)| Zipped::File(n, d, *m))
        .collect();
    zip_of(&files)
}

/// A scratch dir holding the artifact, `releases/` and a canary directory `outside/`
/// that the hostile archives aim at (it exists, so a write through an escape could land).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("a temp dir");
        fs::create_dir(dir.path().join("outside")).expect("a fresh temp dir");
        Scratch { dir }
    }

    fn unpack(
        &self,
        bytes: &[u8],
        format: ArtifactFormat,
        opts: &UnpackOptions,
    ) -> Result<PathBuf> {
        let archive = self.dir.path().join("artifact");
        fs::write(&archive, bytes).expect("a fresh temp dir");
        unpack(
            &archive,
            format,
            "app.bin",
            &self.dir.path().join("releases"),
            "1.0",
            opts,
        )
    }

    /// Nothing but the artifact, `releases/` and an empty `outside/` in the scratch dir,
    /// and nothing but the finished release (when there is one) in `releases/`.
    fn assert_nothing_outside(&self, released: bool, case: &str) {
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(p)
                .unwrap_or_else(|e| panic!("{case}: cannot list {}: {e}", p.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let root = self.dir.path();
        assert_eq!(names(root), ["artifact", "outside", "releases"], "{case}");
        assert!(
            names(&root.join("outside")).is_empty(),
            "{case}: canary touched"
        );
        let want: &[&str] = if released { &["1.0"] } else { &[] };
        assert_eq!(names(&root.join("releases")), want, "{case}");
    }
}

fn unpack_bytes(bytes: &[u8], format: ArtifactFormat) -> (Scratch, Result<PathBuf>) {
    let s = Scratch::new();
    let res = s.unpack(bytes, format, &UnpackOptions::default());
    (s, res)
}

#[test]
fn a_tar_gz_should_unpack_into_the_version_dir_with_nothing_left_over() {
    let tar = tar_with(&[
        ("bin/", tar::EntryType::Directory, None, b""),
        ("bin/run", tar::EntryType::Regular, None, b"#!/bin/sh\n"),
        ("link", tar::EntryType::Symlink, Some("bin/run"), b""),
        ("hard", tar::EntryType::Link, Some("bin/run"), b""),
    ]);
    let (s, res) = unpack_bytes(&gzip(&tar), ArtifactFormat::TarGz);
    let rel = res.unwrap();
    assert_eq!(rel, s.dir.path().join("releases/1.0"));
    assert_eq!(fs::read(rel.join("link")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::read(rel.join("hard")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(
        fs::metadata(rel.join("hard")).unwrap().ino(),
        fs::metadata(rel.join("bin/run")).unwrap().ino()
    );
    s.assert_nothing_outside(true, "good tar.gz");
}

#[test]
fn unpack_should_refuse_every_escape_and_name_the_entry() {
    use tar::EntryType::*;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("/etc/evil", tar_with(&[("/etc/evil", Regular, None, b"x")])),
        ("../evil", tar_with(&[("../evil", Regular, None, b"x")])),
        (
            "a/../../evil",
            tar_with(&[("a/../../evil", Regular, None, b"x")]),
        ),
        ("up", tar_with(&[("up", Symlink, Some("../.."), b"")])),
        ("abs", tar_with(&[("abs", Symlink, Some("/etc"), b"")])),
        ("d/up", tar_with(&[("d/up", Symlink, Some("../../x"), b"")])),
        (
            "hard",
            tar_with(&[("hard", Link, Some("/etc/passwd"), b"")]),
        ),
        (
            "hard2",
            tar_with(&[("hard2", Link, Some("../outside"), b"")]),
        ),
        (
            "hard3",
            tar_with(&[
                ("l", Symlink, Some("."), b""),
                ("hard3", Link, Some("l"), b""),
            ]),
        ),
        ("dev", tar_with(&[("dev", Char, None, b"")])),
        ("blk", tar_with(&[("blk", Block, None, b"")])),
        ("fifo", tar_with(&[("fifo", Fifo, None, b"")])),
    ];
    for (entry, bytes) in cases {
        let (s, res) = unpack_bytes(&bytes, ArtifactFormat::Tar);
        let err = res
            .err()
            .unwrap_or_else(|| panic!("{entry} must be refused"));
        assert!(err.to_string().contains(entry), "{entry}: {err}");
        assert_eq!(err.reason(), "UnsafeArchive", "{entry}: {err}");
        s.assert_nothing_outside(false, entry);
    }
}

#[test]
fn symlinks_that_stay_inside_should_be_kept() {
    use tar::EntryType::*;
    let tar = tar_with(&[
        ("d/", Directory, None, b""),
        ("d/up", Symlink, Some("../f"), b""),
        ("f", Regular, None, b"ok"),
        // A chain that comes back inside, and a link to something not there (yet).
        ("d/e/self", Symlink, Some("../../d/up"), b""),
        ("via", Symlink, Some("d/e/self/../d/up"), b""),
        ("later", Symlink, Some("missing/../f"), b""),
    ]);
    let (s, res) = unpack_bytes(&tar, ArtifactFormat::Tar);
    let rel = res.unwrap();
    assert_eq!(fs::read(rel.join("d/up")).unwrap(), b"ok");
    assert_eq!(fs::read(rel.join("d/e/self")).unwrap(), b"ok");
    s.assert_nothing_outside(true, "links inside");
}

/// `d/d/…/d`, `n` deep: the directories of the chain (short names: a plain tar header
/// holds 100 bytes of path).
fn deep(n: usize) -> String {
    vec!["d"; n].join("/")
}

/// The chain: `d/…/d/up` (30 deep) leads back to the release root, and `esc` goes
/// through it and two `..` further, to the scratch dir's `outside/`. Each link's own
/// text stays inside. Returns (path, target) for `up` and `esc`.
fn chain() -> [(String, String); 2] {
    let d = deep(30);
    let up = (format!("{d}/up"), vec![".."; 30].join("/"));
    let esc = ("esc".to_string(), format!("{d}/up/../../outside"));
    [up, esc]
}

/// Every order of: the `up` link, the `esc` link, and a file written through `esc`.
fn chain_orders() -> Vec<Vec<usize>> {
    vec![
        vec![0, 1, 2],
        vec![0, 2, 1],
        vec![1, 0, 2],
        vec![1, 2, 0],
        vec![2, 0, 1],
        vec![2, 1, 0],
    ]
}

#[test]
fn unpack_should_refuse_a_symlink_chain_that_leaves_the_release_in_every_entry_order() {
    let [up, esc] = chain();
    for order in chain_orders() {
        let tar_parts: Vec<TarEntry> = order
            .iter()
            .map(|i| match i {
                0 => (
                    up.0.as_str(),
                    tar::EntryType::Symlink,
                    Some(up.1.as_str()),
                    &b""[..],
                    0o777,
                ),
                1 => (
                    esc.0.as_str(),
                    tar::EntryType::Symlink,
                    Some(esc.1.as_str()),
                    &b""[..],
                    0o777,
                ),
                _ => (
                    "esc/pwned",
                    tar::EntryType::Regular,
                    None,
                    &b"root"[..],
                    0o644,
                ),
            })
            .collect();
        let zip_parts: Vec<Zipped> = order
            .iter()
            .map(|i| match i {
                0 => Zipped::Link(&up.0, &up.1),
                1 => Zipped::Link(&esc.0, &esc.1),
                _ => Zipped::File("esc/newdir/pwned", b"root", None),
            })
            .collect();
        for (format, bytes) in [
            (ArtifactFormat::Tar, tar_of(&tar_parts)),
            (ArtifactFormat::Zip, zip_of(&zip_parts)),
        ] {
            let case = format!("{format:?} in order {order:?}");
            let (s, res) = unpack_bytes(&bytes, format);
            let err = res
                .err()
                .unwrap_or_else(|| panic!("{case}: must be refused"));
            assert!(err.to_string().contains("\"esc"), "{case}: {err}");
            s.assert_nothing_outside(false, &case);
        }
    }
}

#[test]
fn a_write_through_a_chain_should_be_refused_as_unsafe_naming_the_entry() {
    let [up, esc] = chain();
    let tar = tar_of(&[
        (&up.0, tar::EntryType::Symlink, Some(&up.1), b"", 0o777),
        (&esc.0, tar::EntryType::Symlink, Some(&esc.1), b"", 0o777),
        ("esc/pwned", tar::EntryType::Regular, None, b"root", 0o644),
    ]);
    let zip = zip_of(&[
        Zipped::Link(&up.0, &up.1),
        Zipped::Link(&esc.0, &esc.1),
        Zipped::File("esc/newdir/pwned", b"root", None),
    ]);
    for (format, bytes, entry) in [
        (ArtifactFormat::Tar, tar, "esc/pwned"),
        (ArtifactFormat::Zip, zip, "esc/newdir/pwned"),
    ] {
        let (s, res) = unpack_bytes(&bytes, format);
        let err = res.unwrap_err();
        assert_eq!(err.reason(), "UnsafeArchive", "{format:?}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("refusing entry \"{entry}\"")),
            "{format:?}: {err}"
        );
        s.assert_nothing_outside(false, &format!("{format:?}"));
    }
}

#[test]
fn a_symlink_chain_left_live_in_the_tree_should_be_refused_whatever_the_order() {
    use tar::EntryType::*;
    let [up, esc] = chain();
    // (case, the entry the refusal names, the links as (path, target))
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("up then esc", "esc", vec![(&up.0, &up.1), (&esc.0, &esc.1)]),
        ("esc then up", "esc", vec![(&esc.0, &esc.1), (&up.0, &up.1)]),
        (
            "three links, built downwards",
            "esc",
            vec![("l1", "."), ("d/l2", "../l1"), ("esc", "d/l2/..")],
        ),
        (
            "three links, built upwards",
            "esc",
            vec![("esc", "d/l2/.."), ("d/l2", "../l1"), ("l1", ".")],
        ),
        (
            "through a link to a missing dir",
            "esc",
            vec![("l1", "."), ("esc", "l1/missing/../..")],
        ),
        ("a loop", "a\" or \"b", vec![("a", "b"), ("b", "a")]),
    ];
    for (case, entry, links) in cases {
        let tar: Vec<TarEntry> = links
            .iter()
            .map(|(p, t)| (*p, Symlink, Some(*t), &b""[..], 0o777))
            .collect();
        let zip: Vec<Zipped> = links.iter().map(|(p, t)| Zipped::Link(p, t)).collect();
        for (format, bytes) in [
            (ArtifactFormat::Tar, tar_of(&tar)),
            (ArtifactFormat::TarGz, gzip(&tar_of(&tar))),
            (ArtifactFormat::Zip, zip_of(&zip)),
        ] {
            let (s, res) = unpack_bytes(&bytes, format);
            let err = res
                .err()
                .unwrap_or_else(|| panic!("{case} ({format:?}) must be refused"));
            assert_eq!(err.reason(), "UnsafeArchive", "{case}: {err}");
            let named = entry
                .split("\" or \"")
                .any(|e| err.to_string().contains(&format!("refusing entry \"{e}\"")));
            assert!(named, "{case} ({format:?}): {err}");
            s.assert_nothing_outside(false, case);
        }
    }
}

#[test]
fn a_zip_entry_under_a_link_should_create_no_directory_outside() {
    // `dir` leads to `outside/` through a chain; `dir/newdir/f` must not create `newdir`.
    let zip = zip_of(&[
        Zipped::Link("l1", "."),
        Zipped::Link("dir", "l1/../outside"),
        Zipped::File("dir/newdir/f", b"x", None),
    ]);
    let (s, res) = unpack_bytes(&zip, ArtifactFormat::Zip);
    let err = res.unwrap_err();
    assert_eq!(err.reason(), "UnsafeArchive", "{err}");
    assert!(err.to_string().contains("dir/newdir/f"), "{err}");
    s.assert_nothing_outside(false, "zip dir/newdir/f");
}

#[test]
fn a_zip_should_unpack_and_refuse_escapes() {
    let ok = zip_of(&[
        Zipped::File("a/run.sh", b"echo hi", Some(0o755)),
        Zipped::Link("a/run", "run.sh"),
    ]);
    let (s, res) = unpack_bytes(&ok, ArtifactFormat::Zip);
    let rel = res.unwrap();
    let run = rel.join("a/run.sh");
    assert_eq!(fs::read(&run).unwrap(), b"echo hi");
    assert_eq!(fs::read(rel.join("a/run")).unwrap(), b"echo hi");
    assert_eq!(
        fs::metadata(&run).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    s.assert_nothing_outside(true, "good zip");

    let bad = zip_with(&[("../evil", None, b"x")]);
    let (s, res) = unpack_bytes(&bad, ArtifactFormat::Zip);
    assert!(res.err().unwrap().to_string().contains("../evil"));
    s.assert_nothing_outside(false, "zip ../evil");
}

#[test]
fn every_member_of_a_multi_member_gzip_should_be_unpacked() {
    use tar::EntryType::*;
    // One tar stream cut in two, each half its own gzip member.
    let tar = tar_with(&[
        ("first", Regular, None, &[b'1'; 3000]),
        ("second", Regular, None, &[b'2'; 3000]),
    ]);
    let (a, b) = tar.split_at(2048);
    let split = [gzip(a), gzip(b)].concat();
    // Two whole tar.gz files, one after the other (`cat a.tar.gz b.tar.gz`).
    let catted = [
        gzip(&tar_with(&[("first", Regular, None, &[b'1'; 3000])])),
        gzip(&tar_with(&[("second", Regular, None, &[b'2'; 3000])])),
    ]
    .concat();
    for (case, bytes) in [("split", split), ("concatenated", catted)] {
        let (s, res) = unpack_bytes(&bytes, ArtifactFormat::TarGz);
        let rel = res.unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(fs::read(rel.join("first")).unwrap(), [b'1'; 3000], "{case}");
        assert_eq!(
            fs::read(rel.join("second")).unwrap(),
            [b'2'; 3000],
            "{case}"
        );
        s.assert_nothing_outside(true, case);
    }
}

#[test]
fn trailing_garbage_after_a_gzip_member_should_be_refused_not_dropped() {
    let tar = tar_with(&[("first", tar::EntryType::Regular, None, b"1")]);
    let bytes = [gzip(&tar), b"not gzip at all".to_vec()].concat();
    let (s, res) = unpack_bytes(&bytes, ArtifactFormat::TarGz);
    let err = res.unwrap_err();
    assert_eq!(err.reason(), "CorruptArchive", "{err}");
    s.assert_nothing_outside(false, "trailing garbage");
}

fn small_limits(bytes: u64, entries: u64) -> UnpackOptions {
    UnpackOptions {
        max_unpacked_bytes: bytes,
        max_entries: entries,
        preserve_setid: false,
    }
}

#[test]
fn bombs_should_stop_at_the_byte_limit_naming_the_limit_and_the_entry() {
    let zeros = vec![0u8; 4 << 20];
    let tgz = gzip(&tar_with(&[
        ("small", tar::EntryType::Regular, None, b"ok"),
        ("zeros", tar::EntryType::Regular, None, &zeros),
    ]));
    let zip = zip_of(&[Zipped::File("zeros", &zeros, None)]);
    assert!(
        tgz.len() < 64 << 10 && zip.len() < 64 << 10,
        "bombs compress"
    );
    for (format, bytes) in [(ArtifactFormat::TarGz, tgz), (ArtifactFormat::Zip, zip)] {
        let s = Scratch::new();
        let err = s
            .unpack(&bytes, format, &small_limits(1 << 20, 100))
            .unwrap_err();
        assert_eq!(err.reason(), "ArtifactTooLarge", "{format:?}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("\"zeros\""), "{msg}");
        assert!(
            msg.contains("1048576 unpacked bytes (spec.artifact.maxUnpackedBytes)"),
            "{msg}"
        );
        s.assert_nothing_outside(false, &format!("{format:?}"));
    }
}

#[test]
fn archives_should_stop_at_the_entry_limit_naming_the_entry() {
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    let tar: Vec<TarEntry> = names
        .iter()
        .map(|n| (n.as_str(), tar::EntryType::Regular, None, &b"x"[..], 0o644))
        .collect();
    let zip: Vec<Zipped> = names.iter().map(|n| Zipped::File(n, b"x", None)).collect();
    for (format, bytes) in [
        (ArtifactFormat::Tar, tar_of(&tar)),
        (ArtifactFormat::Zip, zip_of(&zip)),
    ] {
        let s = Scratch::new();
        let err = s
            .unpack(&bytes, format, &small_limits(1 << 20, 3))
            .unwrap_err();
        assert_eq!(err.reason(), "ArtifactTooLarge", "{format:?}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("\"f3\""), "{msg}");
        assert!(
            msg.contains("3 entries (spec.artifact.maxEntries)"),
            "{msg}"
        );
        s.assert_nothing_outside(false, &format!("{format:?}"));
    }
}

#[test]
fn a_sparse_entry_whose_header_understates_its_size_should_stop_at_the_byte_limit() {
    // The header's size is 512 stored bytes; the sparse map makes it 1 GiB on disk.
    let mut h = tar::Header::new_gnu();
    h.set_path("holes").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    let gnu = h.as_gnu_mut().expect("a gnu header");
    gnu.set_real_size(1 << 30);
    gnu.sparse[0].set_offset((1 << 30) - 512);
    gnu.sparse[0].set_length(512);
    h.set_cksum();
    assert_eq!(h.entry_size().unwrap(), 512);
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[7u8; 512][..]).unwrap();
    let tgz = gzip(&b.into_inner().unwrap());
    let s = Scratch::new();
    let err = s
        .unpack(&tgz, ArtifactFormat::TarGz, &small_limits(1 << 20, 100))
        .unwrap_err();
    assert_eq!(err.reason(), "ArtifactTooLarge", "{err}");
    assert!(err.to_string().contains("\"holes\""), "{err}");
    s.assert_nothing_outside(false, "sparse");
}

#[test]
fn a_huge_tar_long_name_should_be_refused_before_it_is_held_in_memory() {
    let mut h = tar::Header::new_gnu();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(8 << 20);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &vec![b'a'; 8 << 20][..]).unwrap();
    let (s, res) = unpack_bytes(&gzip(&b.into_inner().unwrap()), ArtifactFormat::TarGz);
    let err = res.unwrap_err();
    assert_eq!(err.reason(), "ArtifactTooLarge", "{err}");
    assert!(err.to_string().contains("bytes of tar headers"), "{err}");
    s.assert_nothing_outside(false, "long name");
}

#[test]
fn setid_bits_should_be_stripped_unless_the_application_opts_in() {
    use tar::EntryType::*;
    let tar = tar_of(&[
        ("suid", Regular, None, b"x", 0o4755),
        ("sgid/", Directory, None, b"", 0o2775),
        ("sticky/", Directory, None, b"", 0o1777),
    ]);
    let zip = with_zip_mode(
        zip_of(&[Zipped::File("suid", b"x", None)]),
        S_IFREG | 0o4755,
    );
    for (preserve, want) in [
        (false, [0o755, 0o775, 0o777]),
        (true, [0o4755, 0o2775, 0o1777]),
    ] {
        let opts = UnpackOptions {
            preserve_setid: preserve,
            ..UnpackOptions::default()
        };
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let s = Scratch::new();
        let rel = s.unpack(&tar, ArtifactFormat::Tar, &opts).unwrap();
        let got = [
            mode(rel.join("suid")),
            mode(rel.join("sgid")),
            mode(rel.join("sticky")),
        ];
        assert_eq!(got, want, "tar, preserve_setid: {preserve}");
        let s = Scratch::new();
        let rel = s.unpack(&zip, ArtifactFormat::Zip, &opts).unwrap();
        assert_eq!(
            mode(rel.join("suid")),
            want[0],
            "zip, preserve_setid: {preserve}"
        );
    }
}

#[test]
fn a_later_entry_should_replace_an_earlier_one_at_the_same_path() {
    use tar::EntryType::*;
    let tar = tar_with(&[
        ("f", Regular, None, b"old"),
        ("l", Symlink, Some("f"), b""),
        ("f", Regular, None, b"new"),
        ("l", Regular, None, b"file now"),
    ]);
    let (s, res) = unpack_bytes(&tar, ArtifactFormat::Tar);
    let rel = res.unwrap();
    assert_eq!(fs::read(rel.join("f")).unwrap(), b"new");
    assert!(fs::symlink_metadata(rel.join("l")).unwrap().is_file());
    assert_eq!(fs::read(rel.join("l")).unwrap(), b"file now");
    s.assert_nothing_outside(true, "replace");
}

/// A 1 MiB tmpfs mounted on a temp dir, unmounted on drop. Needs root.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount() -> TinyFs {
        assert!(
            // SAFETY: geteuid has no preconditions and cannot fail.
            unsafe { libc::geteuid() } == 0,
            "this test mounts a 1 MiB tmpfs and must run as root (the agent's own user)"
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(ok.success(), "mount -t tmpfs failed");
        TinyFs { dir }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_should_be_reported_as_no_space_naming_the_entry() {
    let fs = TinyFs::mount();
    let releases = fs.dir.path().join("releases");
    let outside = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 2 << 20];
    let tar = tar_with(&[("zeros", tar::EntryType::Regular, None, &zeros)]);

    // A tar.gz is small, so the space check lets it start; the write then fails.
    let archive = outside.path().join("a.tar.gz");
    std::fs::write(&archive, gzip(&tar)).unwrap();
    let opts = UnpackOptions::default();
    let err = unpack(&archive, ArtifactFormat::TarGz, "", &releases, "1.0", &opts).unwrap_err();
    assert_eq!(err.reason(), "NoSpaceLeft", "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("no space left on "), "{msg}");
    assert!(msg.contains("while writing entry \"zeros\""), "{msg}");
    assert_eq!(
        std::fs::read_dir(&releases).unwrap().count(),
        0,
        "nothing left"
    );

    // A plain tar is as large as what it unpacks: refused before anything is written.
    let archive = outside.path().join("a.tar");
    std::fs::write(&archive, &tar).unwrap();
    let err = unpack(&archive, ArtifactFormat::Tar, "", &releases, "1.0", &opts).unwrap_err();
    assert_eq!(err.reason(), "NoSpaceLeft", "{err}");
    assert!(
        err.to_string().starts_with("not enough free space in "),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&releases).unwrap().count(),
        0,
        "nothing left"
    );
}

#[test]
fn a_plain_file_should_be_copied_with_mode_755() {
    let (s, res) = unpack_bytes(b"binary", ArtifactFormat::File);
    let f = res.unwrap().join("app.bin");
    assert_eq!(fs::read(&f).unwrap(), b"binary");
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        plain_file_name(None, "https://x/y/tool-1.0?x=1"),
        "tool-1.0"
    );
    s.assert_nothing_outside(true, "plain file");
}
