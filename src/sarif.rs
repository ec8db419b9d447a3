//! SARIF 2.1.0 for `inspect --format sarif`: each finding becomes a result at its file, so code
//! scanning (GitHub, GitLab) shows a checkpoint that `torch.load` would let run code as an alert
//! on that file. One rule per kind of finding (a deny category for dangerous globals); files that
//! cannot be read become tool-execution notifications, not results, since nothing was judged.

use serde_json::{Value as Json, json};

use crate::checkpoint::judge::deny::Category;
use crate::checkpoint::judge::{Finding, FindingKind};

/// The schema this output follows.
pub const SCHEMA: &str =
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json";

/// What `inspect` concluded for one file.
pub struct FileVerdict<'a> {
    /// The file as given on the command line.
    pub path: &'a str,
    /// Every finding (empty: the file is safe to load).
    pub findings: &'a [Finding],
    /// Why the file could not be read, when it could not (its findings are then those of the
    /// globals named before the failure).
    pub error: Option<String>,
}

/// A rule: what a kind of finding means and what to do about it.
struct Rule {
    id: &'static str,
    name: &'static str,
    short: &'static str,
    help: &'static str,
    /// GitHub's `security-severity` (0–10): critical above 9, high above 7.
    severity: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        id: "FE001",
        name: "CodeExecution",
        short: "torch.load would run commands, Python code or native code",
        help: "The pickle names a global that runs code when the file is loaded with \
               torch.load(weights_only=False) (os.system, builtins.eval, subprocess.Popen, …). \
               Do not load this file. Re-create it from a trusted source, or ship only its tensors \
               (`fuse-ema fold` writes safetensors without running anything).",
        severity: "9.8",
    },
    Rule {
        id: "FE002",
        name: "FileSystem",
        short: "torch.load would read, write or delete files",
        help: "The pickle names a global that touches the file system when the file is loaded \
               (open, shutil, pathlib writes, …). Do not load this file; extract its tensors \
               with `fuse-ema fold` instead.",
        severity: "8.8",
    },
    Rule {
        id: "FE003",
        name: "Network",
        short: "torch.load would open network connections or download",
        help: "The pickle names a global that opens connections or downloads when the file is \
               loaded (socket, urllib, requests, …). Do not load this file.",
        severity: "8.8",
    },
    Rule {
        id: "FE004",
        name: "LoadsFiles",
        short: "torch.load would load further pickles, models or files as code",
        help: "The pickle names a global that loads other files as code (pickle.loads, \
               torch.load, torch.jit.load, importlib, …). Do not load this file.",
        severity: "8.8",
    },
    Rule {
        id: "FE005",
        name: "InterpreterState",
        short: "torch.load would change the interpreter (attributes, imports, hooks)",
        help: "The pickle names a global that changes interpreter state when the file is loaded \
               (setattr, sys.modules, signal handlers, …), which can redirect later code. Do not \
               load this file.",
        severity: "8.1",
    },
    Rule {
        id: "FE010",
        name: "UnknownGlobal",
        short: "A global outside the allow-list, or used against its role",
        help: "torch.load would import this global (running its module's import code) and may \
               call it. It is not one of the exact (module, name, role) pairs a checkpoint of \
               torch, Ultralytics, timm or torchvision needs (docs/security.md). If it is your \
               own model class, allow it explicitly with `--allow module.Name`; otherwise treat \
               the file as untrusted.",
        severity: "7.5",
    },
    Rule {
        id: "FE011",
        name: "AttributeLookup",
        short: "A dotted global name, resolved through attribute lookup",
        help: "The pickle names a global with a dot in it; Python resolves it attribute by \
               attribute from the module, which reaches any object (a module's `torch.load` \
               through another module). No checkpoint needs this; treat the file as hostile.",
        severity: "9.1",
    },
    Rule {
        id: "FE012",
        name: "GadgetCall",
        short: "A call of something no allowed call returns (a gadget chain)",
        help: "The pickle calls an object that was not made by an allowed global: a chain that \
               reaches code through attributes or return values of harmless-looking calls. \
               Treat the file as hostile.",
        severity: "9.1",
    },
];

/// The rule of a finding.
fn rule_of(f: &Finding) -> &'static Rule {
    let id = match (f.kind, f.category) {
        (_, Some(Category::CodeExecution)) => "FE001",
        (_, Some(Category::FileSystem)) => "FE002",
        (_, Some(Category::Network)) => "FE003",
        (_, Some(Category::LoadsFiles)) => "FE004",
        (_, Some(Category::InterpreterState)) => "FE005",
        (FindingKind::AttributeLookup, None) => "FE011",
        (FindingKind::Gadget, None) => "FE012",
        (FindingKind::Dangerous | FindingKind::NotAllowed, None) => "FE010",
    };
    RULES
        .iter()
        .find(|r| r.id == id)
        .expect("every id is a rule")
}

/// A relative path as a URI reference: `/` separators, everything outside RFC 3986's unreserved
/// set (and `/`) percent-encoded, so spaces and `#` in file names survive.
pub fn uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.replace('\\', "/").bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn location(path: &str) -> Json {
    json!({ "physicalLocation": { "artifactLocation": { "uri": uri(path) } } })
}

/// The SARIF log for `files`, one run of fuse-ema.
pub fn log(files: &[FileVerdict<'_>]) -> Json {
    let rules: Vec<Json> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": { "text": r.short },
                "fullDescription": { "text": r.help },
                "help": { "text": r.help, "markdown": r.help },
                "defaultConfiguration": { "level": "error" },
                "properties": {
                    "tags": ["security", "pickle", "supply-chain"],
                    "security-severity": r.severity,
                    "precision": "very-high",
                },
            })
        })
        .collect();
    let mut results = Vec::new();
    let mut notifications = Vec::new();
    for f in files {
        for finding in f.findings {
            let rule = rule_of(finding);
            let index = RULES.iter().position(|r| r.id == rule.id).unwrap_or(0);
            let note = if f.error.is_some() {
                " (named by the file's pickles before the read failed)"
            } else {
                ""
            };
            results.push(json!({
                "ruleId": rule.id,
                "ruleIndex": index,
                "level": "error",
                "kind": "fail",
                "message": { "text": format!("{}: {finding}{note}", f.path) },
                "locations": [location(f.path)],
                "partialFingerprints": { "global/v1": finding.name },
                "properties": {
                    "global": finding.name,
                    "finding": finding.kind.label(),
                },
            }));
        }
        if let Some(e) = &f.error {
            notifications.push(json!({
                "level": "error",
                "message": { "text": e },
                "locations": [location(f.path)],
            }));
        }
    }
    json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "fuse-ema",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": notifications.is_empty(),
                "toolExecutionNotifications": notifications,
            }],
            "artifacts": files.iter().map(|f| json!({ "location": { "uri": uri(f.path) } })).collect::<Vec<_>>(),
            "results": results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_escape_what_a_uri_cannot_hold() {
        assert_eq!(uri("models/best.pt"), "models/best.pt");
        assert_eq!(uri("my models/a#1.pt"), "my%20models/a%231.pt");
        assert_eq!(uri("dir\\x.pt"), "dir/x.pt");
        assert_eq!(uri("é.pt"), "%C3%A9.pt");
    }

    #[test]
    fn each_category_has_its_own_rule() {
        let f = |kind, category| Finding {
            kind,
            name: "m.n".into(),
            problem: "p".into(),
            category,
        };
        let ids: Vec<&str> = [
            f(FindingKind::Dangerous, Some(Category::CodeExecution)),
            f(FindingKind::Dangerous, Some(Category::FileSystem)),
            f(FindingKind::Dangerous, Some(Category::Network)),
            f(FindingKind::NotAllowed, None),
            f(FindingKind::AttributeLookup, None),
            f(FindingKind::Gadget, None),
        ]
        .iter()
        .map(|x| rule_of(x).id)
        .collect();
        assert_eq!(ids, ["FE001", "FE002", "FE003", "FE010", "FE011", "FE012"]);
    }
}
