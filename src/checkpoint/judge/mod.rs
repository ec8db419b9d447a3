//! Judging the globals a pickle names, as `torch.load(weights_only=False)` would resolve them.
//!
//! fuse-ema never imports or calls a global. This module says, for each one, whether loading the
//! file with torch would do only what a checkpoint needs: every global must be an exact
//! `(module, name)` pair of the allow-list ([`allowlist`]), used only in the ways its role
//! ([`roles`]) allows. Anything else is a finding: a global outside the list (explained by the
//! deny categories of [`deny`] where they know it), a role violation, a dotted name that Python
//! resolves through attribute lookup, or a call of something no global made (a gadget chain).

pub mod allowlist;
pub mod compat;
pub mod deny;
pub mod roles;

use std::fmt;

use serde::Serialize;

pub use allowlist::{AllowError, AllowList};
pub use roles::Role;

use super::uses::{GlobalRecord, Use, UseLog};
use deny::Category;

/// What kind of problem a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The global runs code, touches files or the network, loads files or changes the
    /// interpreter (a deny category explains it).
    Dangerous,
    /// Not on the allow-list, or used in a way its role does not allow.
    NotAllowed,
    /// The name has a dot: Python resolves it through attribute lookup from the module.
    AttributeLookup,
    /// Something that no allowed call returns is called: a gadget chain.
    Gadget,
}

impl FindingKind {
    /// The label `inspect` prints.
    pub fn label(self) -> &'static str {
        match self {
            FindingKind::Dangerous => "DANGEROUS",
            FindingKind::NotAllowed => "NOT ALLOWED",
            FindingKind::AttributeLookup => "ATTRIBUTE LOOKUP",
            FindingKind::Gadget => "GADGET CALL",
        }
    }
}

/// One reason the file is not safe to `torch.load`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The kind.
    pub kind: FindingKind,
    /// The global as Python 3 resolves it: `module.name`, or `module:name` for a dotted name.
    pub name: String,
    /// What is wrong, in words.
    pub problem: String,
    /// The deny category that explains it, when one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} — {}", self.kind.label(), self.name, self.problem)
    }
}

/// A global the file references, with how it is judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GlobalReport {
    /// `module.name` as Python 3 resolves it (`module:name` when the name has a dot).
    pub name: String,
    /// The module Python 3 imports.
    pub module: String,
    /// The name looked up in it.
    pub qualname: String,
    /// The name as written in the pickle, when Python 3 maps it to another one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickled_as: Option<String>,
    /// The module exactly as the pickle writes it (what a recording `find_class` receives).
    pub pickled_module: String,
    /// The name exactly as the pickle writes it.
    pub pickled_name: String,
    /// How many times the pickle names it.
    pub count: usize,
    /// Its role on the allow-list, when it is on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// How the pickle uses it (`referenced`, `called(2, constants)`, `created`, …).
    pub uses: Vec<String>,
    /// Why it is dangerous, when it has a finding the deny categories explain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub danger: Option<&'static str>,
    /// Whether it passes: on the allow-list and used only as its role allows.
    pub allowed: bool,
    /// What is wrong with it, when it does not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The verdict on a file's globals.
#[derive(Clone, Debug, Default)]
pub struct Judgement {
    /// Every global, in order of first appearance.
    pub globals: Vec<GlobalReport>,
    /// Every finding: one per global that does not pass and one per loose call, dangerous ones
    /// first, then dotted names, gadget calls, the rest.
    pub findings: Vec<Finding>,
}

/// Characters of a module or name shown before the rest is summarised: no real global comes
/// close, and a hostile megabyte-long name must not flood a one-line error.
const SHOWN_CHARS: usize = 200;

/// `module.name`, or `module:name` when the name itself has dots. Control characters are
/// escaped (`\n`, `\u{1b}`): a hostile name must not break a report line or drive the terminal;
/// parts longer than 200 characters are cut, saying how long they were.
pub fn display_name(module: &str, name: &str) -> String {
    let sep = if name.contains('.') { ':' } else { '.' };
    let mut out = String::with_capacity(module.len().min(512) + name.len().min(512) + 1);
    for (i, part) in [module, name].into_iter().enumerate() {
        if i == 1 {
            out.push(sep);
        }
        for (n, c) in part.chars().enumerate() {
            if n == SHOWN_CHARS {
                out.push_str(&format!("…({} bytes)", part.len()));
                break;
            }
            if c.is_control() {
                out.extend(c.escape_debug());
            } else {
                out.push(c);
            }
        }
    }
    out
}

fn describe(u: &Use) -> String {
    match u {
        Use::Referenced => "referenced".into(),
        Use::Called(a) | Use::Instantiated(a) => {
            let verb = if matches!(u, Use::Called(_)) {
                "called"
            } else {
                "instantiated"
            };
            let kind = if a.constants { "constants" } else { "values" };
            format!("{verb}({} {kind})", a.count)
        }
        Use::Created => "created".into(),
        Use::Reconstructed => "reconstructed".into(),
        Use::StateSet => "state-set".into(),
        Use::Filled => "filled".into(),
        Use::BuiltItself => "built-itself".into(),
        Use::RebuildFunc => "rebuild-func".into(),
        Use::TensorType => "tensor-type".into(),
        Use::AttributeTaken => "attribute-taken".into(),
        Use::ResultCalled => "result-called".into(),
        Use::BadArguments(_) => "bad-arguments".into(),
    }
}

/// The finding for one record judged on its own, if any (the re-emit check judges records under
/// the meaning they would have when written again).
pub fn judge_record(r: &GlobalRecord, allow: &AllowList) -> Option<Finding> {
    judge_one(r, allow).1
}

fn judge_one(r: &GlobalRecord, allow: &AllowList) -> (GlobalReport, Option<Finding>) {
    let (m, n) = (&*r.resolved.module, &*r.resolved.name);
    let name = display_name(m, n);
    let written = display_name(&r.written.module, &r.written.name);
    let role = allow.role(m, n);
    let danger = if n.contains('.') {
        deny::danger_through(m, n).map(|(via, c, why)| (c, why, Some(via)))
    } else {
        deny::danger(m, n).map(|(c, why)| (c, why, None))
    };
    let finding = if n.contains('.') {
        let reach = match &danger {
            Some((_, why, Some(via))) => format!(" (reaches {via}: {why})"),
            _ => String::new(),
        };
        Some((
            FindingKind::AttributeLookup,
            format!("resolves through attribute lookup{reach}"),
        ))
    } else {
        match role {
            None => Some(match danger {
                Some((_, why, _)) => (FindingKind::Dangerous, why.to_string()),
                None => (FindingKind::NotAllowed, "not on the allow-list".to_string()),
            }),
            Some(role) => {
                let violations: Vec<String> =
                    r.uses.iter().filter_map(|u| role.violation(u)).collect();
                (!violations.is_empty()).then(|| {
                    let problem = violations.join("; ");
                    match danger {
                        Some((_, why, _)) => (FindingKind::Dangerous, format!("{why}: {problem}")),
                        None if r.uses.contains(&Use::ResultCalled) => {
                            (FindingKind::Gadget, problem)
                        }
                        None => (FindingKind::NotAllowed, problem),
                    }
                })
            }
        }
    };
    let finding = finding.map(|(kind, problem)| Finding {
        kind,
        name: name.clone(),
        problem,
        category: danger.as_ref().map(|(c, _, _)| *c),
    });
    let report = GlobalReport {
        pickled_as: (written != name).then_some(written),
        pickled_module: r.written.module.to_string(),
        pickled_name: r.written.name.to_string(),
        name,
        module: m.to_string(),
        qualname: n.to_string(),
        count: r.count,
        role: role.map(Role::name),
        uses: r.uses.iter().map(describe).collect(),
        danger: finding
            .as_ref()
            .and_then(|_| danger.as_ref().map(|(_, why, _)| *why)),
        allowed: finding.is_none(),
        problem: finding.as_ref().map(|f| f.problem.clone()),
    };
    (report, finding)
}

/// Judges every global and loose call a graph's pickles recorded.
pub fn judge(log: &UseLog, allow: &AllowList) -> Judgement {
    let mut j = Judgement::default();
    for r in log.records() {
        let (report, finding) = judge_one(r, allow);
        j.globals.push(report);
        j.findings.extend(finding);
    }
    for c in log.loose_calls() {
        j.findings.push(Finding {
            kind: FindingKind::Gadget,
            name: format!("<{}>", c.callee),
            problem: format!(
                "a {} that no global made is called (a gadget chain)",
                c.callee
            ),
            category: None,
        });
    }
    // The worst first, so that one-line summaries name them; otherwise in order of appearance.
    j.findings.sort_by_key(|f| match f.kind {
        FindingKind::Dangerous => 0,
        FindingKind::AttributeLookup => 1,
        FindingKind::Gadget => 2,
        FindingKind::NotAllowed => 3,
    });
    j
}

/// Why `--strict` refuses a file: its findings.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", summary(.0))]
pub struct Refusal(pub Vec<Finding>);

/// Findings a one-line message names before it summarises the rest.
const SUMMARY_NAMES: usize = 20;

/// `N finding(s): name (problem), …` for one-line messages (the first 20, then a count).
pub fn summary(findings: &[Finding]) -> String {
    let mut items: Vec<String> = findings
        .iter()
        .take(SUMMARY_NAMES)
        .map(|f| format!("{} ({})", f.name, f.problem))
        .collect();
    if findings.len() > SUMMARY_NAMES {
        items.push(format!("and {} more", findings.len() - SUMMARY_NAMES));
    }
    format!("{} finding(s): {}", findings.len(), items.join(", "))
}

/// The `--strict` gate: `Ok` when every global passes, else the findings.
pub fn strict_check(log: &UseLog, allow: &AllowList) -> Result<(), Refusal> {
    let j = judge(log, allow);
    if j.findings.is_empty() {
        Ok(())
    } else {
        Err(Refusal(j.findings))
    }
}

#[cfg(test)]
mod tests;
