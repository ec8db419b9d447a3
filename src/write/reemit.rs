//! The judgement of a graph about to be pickled again: what a loader of the *output* would look up.
//!
//! The repickler writes every global under the name the input wrote, at protocol 2, because that
//! is what `torch.save` writes. Python maps Python 2 names (`__builtin__`, `commands`,
//! `copy_reg`, …) through `_compat_pickle` only below protocol 3, so a name that was harmless in
//! a protocol-4 input (an import error) would resolve to `builtins.eval` once written again at
//! protocol 2. Judging the input is therefore not enough: every global is resolved again as the
//! output's loader would resolve it, and one whose meaning changes refuses the output.

use crate::checkpoint::judge::compat;
use crate::checkpoint::judge::{self, AllowList, Finding, FindingKind};
use crate::checkpoint::uses::UseLog;
use crate::checkpoint::value::Global;

/// The protocol the repickler writes.
pub const PROTOCOL: u8 = 2;

/// What `written` means to Python 3 in a pickle of [`PROTOCOL`].
pub fn resolved(written: &Global) -> Global {
    compat::resolve(written, PROTOCOL)
}

/// One finding per global of `input` whose meaning would change when written again: judged under
/// its new meaning (its uses unchanged), and refused even where that meaning is allowed, since the
/// output would then do what the input never did.
pub fn refusals(input: &UseLog, allow: &AllowList) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in input.records() {
        let now = resolved(&r.written);
        if now == r.resolved {
            continue;
        }
        let mut moved = r.clone();
        moved.resolved = now.clone();
        let why = format!(
            "written again at protocol {PROTOCOL}, `{}` would mean {} where the input meant {}",
            r.written.dotted(),
            now.dotted(),
            r.resolved.dotted()
        );
        out.push(match judge::judge_record(&moved, allow) {
            Some(mut f) => {
                f.problem = format!("{}; {why}", f.problem);
                f
            }
            None => Finding {
                kind: FindingKind::NotAllowed,
                name: now.dotted(),
                problem: why,
                category: None,
            },
        });
    }
    out
}
