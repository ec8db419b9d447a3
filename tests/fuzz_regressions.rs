//! Inputs the fuzzers crashed on (tests/fuzz_regressions/), kept so the fixes stay fixed: each
//! must give a clean answer — exit 0, 1 or 2, one error line at most — never a panic.

mod common;

#[test]
fn fuzz_findings_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            continue;
        }
        n += 1;
        let r = common::run(&["inspect", "--json", p.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(
            matches!(r.status.code(), Some(0..=2)),
            "{}: {:?} {stderr}",
            p.display(),
            r.status
        );
        assert!(!stderr.contains("panicked"), "{}: {stderr}", p.display());
        assert!(
            stderr.trim_end().lines().count() <= 1,
            "{}: {stderr}",
            p.display()
        );
    }
    assert!(n >= 1, "the regression corpus is empty");
}
