//! `verify`'s metadata check: the keys Ultralytics' `AutoBackend` acts on when it runs an ONNX
//! (`names` labels every detection, `stride` and `imgsz` letterbox the input, `task` picks the
//! post-processing, `kpt_shape` splits keypoints) compared with what `export` would write for
//! the checkpoint. A file whose parity passes but whose class names are swapped still reports
//! the wrong class for every box (review 7, F9).

use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::checkpoint::py::ModuleRef;
use crate::onnx::proto::{Dim, Model};

/// The outcome: the keys compared and each difference found, in words.
#[derive(Clone, Debug, Serialize)]
pub struct MetadataCheck {
    /// No difference that changes what a consumer does.
    pub pass: bool,
    /// The keys compared.
    pub checked: Vec<&'static str>,
    /// One line per key that differs or is missing.
    pub differences: Vec<String>,
}

impl MetadataCheck {
    /// One line for the text report.
    pub fn summary(&self) -> String {
        match (self.pass, self.checked.is_empty()) {
            (true, true) => "not compared (not an Ultralytics model)".into(),
            (true, false) => format!("{} agree with the checkpoint", self.checked.join(", ")),
            (false, _) => format!("FAIL: {}", self.differences.join("; ")),
        }
    }
}

/// Compares `model`'s metadata with what an export of `root` (in `ckpt`) would write.
pub fn check_metadata(model: &Model, ckpt: &Checkpoint, root: ModuleRef) -> MetadataCheck {
    let mut check = MetadataCheck {
        pass: true,
        checked: Vec::new(),
        differences: Vec::new(),
    };
    // The classic exporters' models write their own metadata, which AutoBackend does not read.
    if crate::models::foreign::classic(root).is_some() {
        return check;
    }
    let file = |k: &str| {
        (model.metadata.iter())
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let mut compare = |key: &'static str, want: String, same: &dyn Fn(&str) -> bool| {
        check.checked.push(key);
        match file(key) {
            Some(v) if same(v) => {}
            Some(v) => check
                .differences
                .push(format!("`{key}` is {v}, the checkpoint's is {want}")),
            None => check
                .differences
                .push(format!("`{key}` is missing (the checkpoint's is {want})")),
        }
    };
    let (task, _) = crate::onnx::task_and_classes(root);
    compare("task", task.clone(), &|v| v == task);
    let stride = match root.attr_tensor_f64("stride") {
        Ok(Some(s)) => s.iter().copied().fold(1.0, f64::max) as i64,
        _ => 32,
    };
    compare("stride", stride.to_string(), &|v| {
        v.trim().parse() == Ok(stride)
    });
    if let Some(names) = root
        .attr("names")
        .and_then(|n| class_names(&crate::checkpoint::metadata::to_json(&ckpt.graph, n)))
    {
        let shown = names
            .iter()
            .map(|(i, n)| format!("{i}: '{}'", n.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(", ");
        compare("names", format!("{{{shown}}}"), &|v| {
            parse_names(v).as_ref() == Some(&names)
        });
    }
    let head = (root.child("model").ok()).and_then(|l| l.children().pop().map(|(_, h)| h));
    let kpt_shape = head.and_then(|h| h.ints("kpt_shape"));
    if let Some(k) = kpt_shape.clone() {
        compare("kpt_shape", format!("{k:?}"), &|v| {
            int_list(v).as_ref() == Some(&k)
        });
    }
    // Ultralytics' AutoBackend literal_evals `kpt_names` and labels keypoints with it; export
    // writes it as Python's repr of the checkpoint's dict, so an honest file holds exactly that.
    if let Some(names) = kpt_shape.and_then(|_| root.attr("kpt_names")) {
        let want = crate::onnx::py_repr(&crate::checkpoint::metadata::to_json(&ckpt.graph, names));
        compare("kpt_names", want.clone(), &|v| v == want);
    }
    if let Some(input) = model.inputs.first()
        && let [_, _, Dim::Fixed(h), Dim::Fixed(w)] = input.dims[..]
    {
        let hw = vec![h, w];
        compare("imgsz", format!("{hw:?} (the input's size)"), &|v| {
            int_list(v).as_ref() == Some(&hw)
        });
    }
    check.pass = check.differences.is_empty();
    check
}

/// Class names by index from the checkpoint's `names` (a dict keyed by int, or a list).
fn class_names(v: &serde_json::Value) -> Option<Vec<(i64, String)>> {
    use serde_json::Value as J;
    let mut out: Vec<(i64, String)> = match v {
        J::Object(m) => m
            .iter()
            .map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
            .collect::<Option<_>>()?,
        J::Array(a) => (a.iter().enumerate())
            .map(|(i, v)| Some((i as i64, v.as_str()?.to_string())))
            .collect::<Option<_>>()?,
        _ => return None,
    };
    out.sort();
    Some(out)
}

/// `[1, 2]` as Python writes a list of ints.
fn int_list(s: &str) -> Option<Vec<i64>> {
    let inner = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim().is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|p| p.trim().parse().ok()).collect()
}

/// `{0: 'person', 1: "it's"}` as Python's `str(dict)` writes class names (what AutoBackend
/// reads back with `ast.literal_eval`), sorted by index; `None` for anything else.
fn parse_names(s: &str) -> Option<Vec<(i64, String)>> {
    let mut c = s.trim().strip_prefix('{')?.chars().peekable();
    let mut out = Vec::new();
    let skip = |c: &mut std::iter::Peekable<std::str::Chars>| {
        while c.next_if(|x| x.is_whitespace()).is_some() {}
    };
    loop {
        skip(&mut c);
        if c.next_if_eq(&'}').is_some() && out.is_empty() {
            break;
        }
        let mut key = String::new();
        while let Some(d) = c.next_if(|x| x.is_ascii_digit() || *x == '-') {
            key.push(d);
        }
        let key: i64 = key.parse().ok()?;
        skip(&mut c);
        c.next_if_eq(&':')?;
        skip(&mut c);
        let quote = c.next_if(|x| *x == '\'' || *x == '"')?;
        let mut name = String::new();
        loop {
            match c.next()? {
                '\\' => match c.next()? {
                    'n' => name.push('\n'),
                    't' => name.push('\t'),
                    x @ ('\\' | '\'' | '"') => name.push(x),
                    // Other escapes (\x.., \u....) are not class names this check reads.
                    _ => return None,
                },
                x if x == quote => break,
                x => name.push(x),
            }
        }
        out.push((key, name));
        skip(&mut c);
        match c.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    skip(&mut c);
    if c.next().is_some() {
        return None;
    }
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_python_writes_them() {
        let want = vec![(0, "red".to_string()), (1, "it's".to_string())];
        assert_eq!(parse_names("{0: 'red', 1: \"it's\"}"), Some(want));
        assert_eq!(parse_names("{}"), Some(vec![]));
        assert_eq!(parse_names("{0: 'red', 1: 'blue'} x"), None);
        assert_eq!(parse_names("{0: 'red' 1: 'blue'}"), None);
        assert_eq!(int_list("[17, 3]"), Some(vec![17, 3]));
        assert_eq!(int_list("[17, x]"), None);
    }
}
