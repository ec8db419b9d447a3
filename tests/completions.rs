//! `fuse-ema completions` and `fuse-ema man`: scripts the shells accept, naming every command,
//! and man pages for the program and each command.

mod common;

use common::run;

const COMMANDS: &[&str] = &["inspect", "fold", "diff", "export", "verify"];

#[test]
fn every_shell_gets_a_script_naming_every_command() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let r = run(&["completions", shell]);
        assert_eq!(r.status.code(), Some(0), "{shell}");
        let s = String::from_utf8(r.stdout).unwrap();
        for c in COMMANDS {
            assert!(s.contains(c), "{shell}: {c} missing");
        }
        // fish names long options without their dashes (`-l strict`).
        assert!(s.contains("strict"), "{shell}: options missing");
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn the_bash_script_is_valid_bash() {
    let r = run(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fuse-ema.bash");
    std::fs::write(&script, &r.stdout).unwrap();
    // Syntax, then a real completion of `fuse-ema ins<TAB>`.
    let check = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e; bash -n '{0}'; source '{0}'; COMP_WORDS=(fuse-ema ins); COMP_CWORD=1; \
             _fuse__ema fuse-ema ins fuse-ema; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "inspect");
}

#[test]
fn man_pages_for_the_program_and_each_command() {
    let r = run(&["man"]);
    assert_eq!(r.status.code(), Some(0));
    let page = String::from_utf8(r.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH fuse-ema"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let r = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    for c in COMMANDS {
        let p = dir.path().join(format!("fuse-ema-{c}.1"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(text.contains(&format!(".TH fuse-ema-{c}")), "{c}");
        assert!(
            text.contains("Examples"),
            "{c}: the examples are in the page"
        );
    }
    assert!(dir.path().join("fuse-ema.1").exists());
    let r = run(&["man", "--dir", "/nonexistent/dir"]);
    assert_eq!(r.status.code(), Some(2));
}

/// The completions and man pages the wheel ships (pyproject.toml `data`, under `dist/data/share`)
/// are what the binary prints now. `FUSE_EMA_BLESS_DOCS=1` rewrites them.
#[test]
fn the_wheels_completions_and_man_pages_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/data/share");
    let bless = std::env::var_os("FUSE_EMA_BLESS_DOCS").is_some();
    let mut want: Vec<(std::path::PathBuf, Vec<u8>)> = [
        ("bash", "bash-completion/completions/fuse-ema"),
        ("zsh", "zsh/site-functions/_fuse-ema"),
        ("fish", "fish/vendor_completions.d/fuse-ema.fish"),
    ]
    .iter()
    .map(|(shell, path)| (root.join(path), run(&["completions", shell]).stdout))
    .collect();
    let man = tempfile::tempdir().unwrap();
    assert_eq!(
        run(&["man", "--dir", man.path().to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    for e in std::fs::read_dir(man.path()).unwrap() {
        let e = e.unwrap();
        want.push((
            root.join("man/man1").join(e.file_name()),
            std::fs::read(e.path()).unwrap(),
        ));
    }
    let mut stale = Vec::new();
    for (path, bytes) in &want {
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        } else if std::fs::read(path).ok().as_ref() != Some(bytes) {
            stale.push(path.display().to_string());
        }
    }
    // No page for a command that no longer exists.
    let pages = std::fs::read_dir(root.join("man/man1"))
        .map(|d| d.count())
        .unwrap_or(0);
    let want_pages = want
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "1"))
        .count();
    assert!(
        stale.is_empty() && pages == want_pages,
        "stale: {stale:?} ({pages} pages, {want_pages} expected); rerun with FUSE_EMA_BLESS_DOCS=1"
    );
}
