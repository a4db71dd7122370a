//! Every example under manifests/ stays valid: it applies with `--dry-run` on both
//! stores, is named `<kind>_<scenario>.yaml`, and points its editor at the right schema.

use deployctl::testing::EtcdServer;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_deployctl");

/// Every `*.yaml` under manifests/, sorted.
fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for e in entries {
            let path = e.expect("reading a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "yaml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"),
        &mut out,
    );
    out.sort();
    assert!(out.len() >= 9, "examples missing: {out:?}");
    out
}

fn dry_run(store: &str, files: &[PathBuf]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DEPLOYCTL_STORE")
        .args(["--store", store, "apply", "--dry-run"]);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    let out = cmd.output().expect("running deployctl apply");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Each file alone, then all of them at once (Machines and Applications first).
fn every_example_should_apply_with_dry_run(store: &str) {
    let files = manifest_files();
    for f in &files {
        let (ok, out) = dry_run(store, std::slice::from_ref(f));
        assert!(ok, "{} does not apply: {out}", f.display());
        assert!(out.contains("created (dry run)"), "{}: {out}", f.display());
    }
    let (ok, out) = dry_run(store, &files);
    assert!(ok, "manifests/ does not apply as a whole: {out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("created (dry run)"))
            .count(),
        files.len(),
        "one object per file, none written: {out}"
    );
    // A dry run writes nothing: a second one still creates everything.
    let (_, again) = dry_run(store, &files);
    assert!(!again.contains("unchanged"), "{again}");
}

#[test]
fn every_example_should_apply_with_dry_run_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store.db");
    every_example_should_apply_with_dry_run(&store.display().to_string());
}

#[test]
fn every_example_should_apply_with_dry_run_on_etcd() {
    let etcd = EtcdServer::start();
    every_example_should_apply_with_dry_run(&etcd.url());
}

#[test]
fn every_example_should_be_named_by_kind_and_point_at_its_schema() {
    for f in manifest_files() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let (prefix, scenario) = name
            .split_once('_')
            .unwrap_or_else(|| panic!("{name}: not named <kind>_<scenario>.yaml"));
        assert!(scenario.len() > ".yaml".len(), "{name}: no scenario");
        let kind = match prefix {
            "application" => "Application",
            "rollout" => "Rollout",
            "machine" => "Machine",
            "notifier" => "Notifier",
            "analysistemplate" => "AnalysisTemplate",
            other => panic!("{name}: unknown kind {other:?}"),
        };
        assert!(
            text.contains(&format!("\nkind: {kind}\n")),
            "{name}: does not declare kind {kind}"
        );
        let first = text.lines().next().unwrap_or_default();
        let schema = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{name}: first line is not the schema line: {first:?}"));
        let target = f.parent().unwrap().join(schema);
        assert!(
            schema.ends_with(&format!("schemas/{prefix}.json")) && target.is_file(),
            "{name}: schema {schema} is not the {prefix} schema"
        );
    }
}
