//! fuse-ema against CPython. For every file of the hostile corpus, tests/hostile/generate.py
//! recorded which globals CPython's unpickler asks `find_class` for on `torch.load`'s own path
//! (zip as miniz reads it, else the legacy tar members, else the pickle sequence), and in pickles
//! other loaders run (zip members, object `.npy`), with a `find_class` that imports nothing
//! (tests/hostile/python-globals.json). fuse-ema must report a superset of them, or refuse the
//! file; and `--strict` may accept a file only when every one of them is allow-listed.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::run;

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `expect` of every manifest entry.
fn expectations() -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(hostile_dir()).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().to_string();
        if n.starts_with("manifest") && n.ends_with(".json") {
            for (k, v) in json(&p).as_object().unwrap() {
                out.insert(k.clone(), v["expect"].as_str().unwrap_or("").to_string());
            }
        }
    }
    out
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What fuse-ema's `inspect --json` reports: every global, by its Python 3 name and as pickled,
/// and those `--strict` accepts.
fn reported(report: &serde_json::Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    let mut allowed = BTreeSet::new();
    for g in report["globals"].as_array().into_iter().flatten() {
        let joined = |a: &str, b: &str| match (g[a].as_str(), g[b].as_str()) {
            (Some(m), Some(n)) => Some(format!("{m}.{n}")),
            _ => None,
        };
        // Dotted names are shown as `module:name`; Python's record joins them with a dot.
        let forms = [
            g["name"].as_str().map(str::to_string),
            g["pickled_as"].as_str().map(str::to_string),
            joined("module", "qualname"),
            joined("pickled_module", "pickled_name"),
        ];
        for n in forms.into_iter().flatten() {
            {
                all.insert(n.to_string());
                if g["allowed"] == true {
                    allowed.insert(n.to_string());
                }
            }
        }
    }
    (all, allowed)
}

#[test]
fn python_record_covers_the_corpus() {
    let record = json(&hostile_dir().join("python-globals.json"));
    let record = record.as_object().unwrap();
    let files: Vec<_> = expectations().into_keys().collect();
    let covered = files.iter().filter(|f| record.contains_key(*f)).count();
    // Every regular file is recorded (folders such as a shard index are not pickles).
    assert!(
        covered + 2 >= files.len(),
        "{covered} of {} recorded",
        files.len()
    );
    let with_globals = record
        .values()
        .filter(|r| !names(&r["globals"]).is_empty() || !names(&r["other_readers"]).is_empty())
        .count();
    assert!(with_globals >= 200, "{with_globals} files name globals");
}

#[test]
fn fuse_ema_reports_every_global_python_would_look_up() {
    let record = json(&hostile_dir().join("python-globals.json"));
    let expect = expectations();
    let mut failures = Vec::new();
    let mut compared = 0;
    for (name, r) in record.as_object().unwrap() {
        let mut want: BTreeSet<String> = names(&r["globals"]).into_iter().collect();
        want.extend(names(&r["other_readers"]));
        if want.is_empty() {
            continue;
        }
        let path = hostile_dir().join("files").join(name);
        let p = path.to_str().unwrap();
        let out = run(&["inspect", "--json", p]);
        let code = out.status.code();
        let strict = run(&["inspect", "--strict", p]).status.code();
        let kind = expect.get(name).map(String::as_str).unwrap_or("");
        match code {
            Some(2) => {
                // Refused: nothing passes, but a refusal of a file the manifest calls dangerous
                // or clean hides what Python would run.
                if kind != "error" {
                    failures.push(format!("{name}: refused (exit 2) a {kind} file"));
                }
                if strict != Some(2) {
                    failures.push(format!(
                        "{name}: inspect refuses, --strict exits {strict:?}"
                    ));
                }
                continue;
            }
            Some(0 | 1) => {}
            other => {
                failures.push(format!("{name}: inspect --json exit {other:?}"));
                continue;
            }
        }
        compared += 1;
        let report: serde_json::Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{name}: stdout is not JSON: {e}"));
                continue;
            }
        };
        let (all, allowed) = reported(&report);
        let missing: Vec<_> = want.iter().filter(|g| !all.contains(*g)).collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{name}: Python looks up {missing:?}, fuse-ema does not report them ({})",
                r["path"]
            ));
        }
        if strict == Some(0) {
            let unallowed: Vec<_> = want.iter().filter(|g| !allowed.contains(*g)).collect();
            if kind != "clean" {
                failures.push(format!(
                    "{name}: --strict accepts a {kind} file; Python looks up {want:?}"
                ));
            } else if !unallowed.is_empty() {
                failures.push(format!(
                    "{name}: --strict accepts it, but fuse-ema does not mark {unallowed:?} allowed"
                ));
            }
        }
    }
    assert!(compared >= 20, "only {compared} files compared");
    assert!(
        failures.is_empty(),
        "{} differences from CPython:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
