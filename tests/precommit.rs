//! The pre-commit hook (`.pre-commit-hooks.yaml`), run by the real `pre-commit` tool against a
//! scratch git repository that uses this repository, from its local path, as the hook repo at
//! the commit checked out here (so the hook tested is the committed one). pre-commit installs
//! fuse-ema into its own venv with pip, building it from source with maturin; the build reuses
//! this target directory (`MATURIN_PEP517_ARGS=--profile dev`) so it takes seconds.
//!
//! `pre-commit` comes from `FUSE_EMA_PRE_COMMIT` (set by `./scripts/test`, which installs it) or
//! the PATH; without it this test fails, it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pre_commit() -> PathBuf {
    if let Some(p) = std::env::var_os("FUSE_EMA_PRE_COMMIT") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("pre-commit"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("pre-commit not found: run the suite with ./scripts/test, which installs it")
    })
}

fn git(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `git commit` in `repo` with the hook installed: (exit code, everything printed).
fn commit(repo: &Path, home: &Path, message: &str) -> (i32, String) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let out = Command::new("git")
        .args(["commit", "-q", "-m", message])
        .current_dir(repo)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("PRE_COMMIT_HOME", home)
        .env("MATURIN_PEP517_ARGS", "--profile dev")
        .env("CARGO_TARGET_DIR", target)
        // The hook judges files; it must not depend on a runtime being found.
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_hook_passes_a_clean_checkpoint_and_refuses_a_malicious_one() {
    let head = String::from_utf8(git(&root(), &["rev-parse", "HEAD"]).stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let home = dir.path().join("pre-commit-home");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(
        repo.join(".pre-commit-config.yaml"),
        format!(
            "repos:\n  - repo: {}\n    rev: {}\n    hooks:\n      - id: fuse-ema-inspect\n",
            root().display(),
            head.trim()
        ),
    )
    .unwrap();
    let install = Command::new(pre_commit())
        .args(["install"])
        .current_dir(&repo)
        .env("PRE_COMMIT_HOME", &home)
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );

    std::fs::copy(root().join("fixtures/yolov8-best.pt"), repo.join("best.pt")).unwrap();
    git(&repo, &["add", "."]);
    let (code, text) = commit(&repo, &home, "clean");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("fuse-ema inspect --strict"), "{text}");
    assert!(text.contains("Passed"), "{text}");

    std::fs::copy(
        root().join("fixtures/malicious.pt"),
        repo.join("weights.pth"),
    )
    .unwrap();
    git(&repo, &["add", "weights.pth"]);
    let (code, text) = commit(&repo, &home, "hostile");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("Failed"), "{text}");
    assert!(text.contains("weights.pth refused"), "{text}");
    assert!(
        text.contains("posix.system"),
        "the message names the global: {text}"
    );
    // The commit did not happen.
    let log = String::from_utf8(git(&repo, &["log", "--format=%s"]).stdout).unwrap();
    assert_eq!(log.trim(), "clean");
}
