//! The structure-aware fuzz targets (fuzz/fuzz_targets/grammar.rs, module_mutate.rs) run as plain
//! tests on pseudo-random inputs, so their oracles hold on every branch without cargo-fuzz.

#[path = "../fuzz/fuzz_targets/grammar.rs"]
mod grammar;
#[path = "../fuzz/fuzz_targets/module_mutate.rs"]
mod module_mutate;

/// Deterministic pseudo-random inputs (xorshift64*).
fn inputs(n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| {
                    s ^= s >> 12;
                    s ^= s << 25;
                    s ^= s >> 27;
                    (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
                })
                .collect()
        })
        .collect()
}

#[test]
fn generated_pickles_never_lose_a_global_or_pass_a_flagged_call() {
    let mut failures = Vec::new();
    let mut judged = 0;
    for data in inputs(4000, 96, 0x5eed) {
        let p = grammar::generate(&data);
        if grammar::Judge::judge(&grammar::Today, &p.bytes).is_some() {
            judged += 1;
        }
        if let Err(e) = grammar::check(&p, &grammar::Today, false) {
            failures.push(format!("{e}: {:?}", p.bytes));
        }
    }
    // The grammar must produce pickles the VM reads, or the oracle checks nothing.
    assert!(
        judged >= 2000,
        "only {judged} of 4000 generated pickles were read"
    );
    assert!(
        failures.is_empty(),
        "{}",
        failures[..failures.len().min(5)].join("\n")
    );
}

#[test]
fn generated_pickles_respect_the_role_allow_list() {
    // Issue 13's contract (exact allow-list with roles): any global used outside its role makes
    // the pickle not clean. Fails on the prefix allow-list; passes once the role-aware judgement
    // is merged.
    let mut failures = Vec::new();
    for data in inputs(4000, 96, 0xa11) {
        let p = grammar::generate(&data);
        if let Err(e) = grammar::check(&p, &grammar::Today, true) {
            failures.push(e);
        }
    }
    failures.sort();
    failures.dedup();
    assert!(
        failures.is_empty(),
        "{} kinds of violation, e.g.\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
}

#[test]
fn wrong_module_trees_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let fixtures = module_mutate::load_fixtures(&dir);
    assert_eq!(
        fixtures.len(),
        module_mutate::FIXTURES.len(),
        "fixtures load"
    );
    let (mut opened, mut exported, mut referenced) = (0, 0, 0);
    // Few edits per input (6 bytes: the fixture, one edit), so many runs reach the builders.
    for data in inputs(40, 6, 0xb0b) {
        let r = module_mutate::run(&fixtures, &data);
        opened += r.opened as usize;
        exported += r.exported as usize;
        referenced += r.referenced as usize;
    }
    // Inputs the module_tree fuzzer crashed on (fixture index, then 5-byte edits).
    const CRASHES: &[&[u8]] = &[&[5, 5, 0x22, 0, 0x7e, 0]];
    for crash in CRASHES {
        module_mutate::run(&fixtures, crash);
    }
    let _ = std::fs::remove_file(module_mutate::scratch());
    assert!(
        opened >= 20 && exported >= 5 && referenced >= 5,
        "the harness must reach the builders: opened {opened}, exported {exported}, referenced {referenced}"
    );
}
