//! The locator: named layouts first, then the general rule, with explicit selectors overriding
//! both. Several fits are an error listing the flag that picks each; none is an error saying what
//! was looked for.

use super::layouts::{NAMED, located, set};
use super::matching_raw;
use super::{EmaError, EmaErrorKind, Located, Named, Side, strip_wrappers};
use crate::checkpoint::Checkpoint;
use crate::checkpoint::sets::WeightSet;

/// Key names that mark a set as an average of another.
const AVERAGE_WORDS: &[&str] = &[
    "ema", "shadow", "swa", "teacher", "averaged", "average", "avg",
];

/// `--ema` / `--raw` overrides.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    /// Where the EMA is: a weight set path (`state_dict_ema`, `ema.module`) or a key prefix
    /// ending in `.` (`model_ema.`).
    pub ema: Option<String>,
    /// Where the raw weights are, likewise.
    pub raw: Option<String>,
}

impl Selectors {
    /// `--ema PATH`: the EMA is another checkpoint (diffusers' `unet_ema/` folder beside `unet/`,
    /// an EMA saved to its own file) when the selector contains a `/` or names an existing
    /// folder — weight set paths and key prefixes never contain `/`.
    pub fn ema_path(&self) -> Option<&std::path::Path> {
        let s = self.ema.as_deref()?;
        let p = std::path::Path::new(s);
        (s.contains('/') || p.is_dir()).then_some(p)
    }
}

/// Finds the EMA in `ema_ck`, a checkpoint of its own (`--ema PATH`), and the raw weights in
/// `ck`: the EMA file must hold one weight set; the raw side is `--raw`, else the set of `ck`
/// that matches it by name and shape.
pub fn locate_in(
    ck: &Checkpoint,
    ema_ck: &Checkpoint,
    sel: &Selectors,
) -> Result<Located, EmaError> {
    let err = |path: &std::path::Path, kind| EmaError {
        path: path.to_path_buf(),
        kind,
    };
    let ema_sets = ema_ck
        .weight_sets()
        .map_err(|e| err(&ema_ck.path, EmaErrorKind::Module(e)))?;
    let ema = match ema_sets.as_slice() {
        [one] => strip_wrappers(one.tensors.clone()),
        sets => {
            return Err(err(
                &ema_ck.path,
                EmaErrorKind::EmaFileSets {
                    file: ema_ck.path.clone(),
                    sets: sets.len(),
                },
            ));
        }
    };
    let sets = ck
        .weight_sets()
        .map_err(|e| err(&ck.path, EmaErrorKind::Module(e)))?;
    let raw = match &sel.raw {
        Some(r) => Some(select(&sets, r).map_err(|k| err(&ck.path, k))?),
        // No set is excluded: the EMA lives in another file.
        None => matching_raw(&sets, "\0", &ema),
    };
    let origin = ema_ck.path.display().to_string();
    Ok(located(
        "separate-files",
        format!("--ema {origin}: the EMA saved on its own"),
        Side {
            origin,
            tensors: ema,
        },
        raw,
    ))
}

/// Finds the EMA (and the raw weights) in a checkpoint.
pub fn locate(ck: &Checkpoint, sel: &Selectors) -> Result<Located, EmaError> {
    let err = |kind| EmaError {
        path: ck.path.clone(),
        kind,
    };
    let sets = ck.weight_sets().map_err(|e| err(EmaErrorKind::Module(e)))?;
    let mut l = match &sel.ema {
        Some(s) => {
            let ema = select(&sets, s).map_err(err)?;
            let raw = matching_raw(&sets, s, &ema.tensors);
            located("selected", format!("--ema {s}"), ema, raw)
        }
        None => auto(ck, &sets).map_err(err)?,
    };
    if let Some(r) = &sel.raw {
        l.raw = Some(select(&sets, r).map_err(err)?);
        l.rule = format!("{}; --raw {r}", l.rule);
    }
    Ok(l)
}

fn auto(ck: &Checkpoint, sets: &[WeightSet]) -> Result<Located, EmaErrorKind> {
    for (_, detect) in NAMED {
        if let Some(l) = detect(ck, sets)? {
            return Ok(l);
        }
    }
    let mut candidates: Vec<Located> = sets
        .iter()
        .filter(|s| names_an_average(&s.path))
        .filter_map(|s| {
            let ema = strip_wrappers(s.tensors.clone());
            let raw = matching_raw(sets, &s.path, &ema)?;
            let rule = format!(
                "'{}' names an average and matches '{}' by name and shape",
                s.path, raw.origin
            );
            let ema = Side {
                origin: s.path.clone(),
                tensors: ema,
            };
            Some(located("generic", rule, ema, Some(raw)))
        })
        .collect();
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(EmaErrorKind::NotFound {
            holds: sets
                .iter()
                .map(|s| {
                    let p = if s.path.is_empty() { "(root)" } else { &s.path };
                    format!("'{p}' ({} tensors)", s.tensors.len())
                })
                .collect(),
        }),
        _ => Err(EmaErrorKind::Ambiguous(
            candidates
                .iter()
                .map(|c| (c.ema.origin.clone(), format!("--ema {}", c.ema.origin)))
                .collect(),
        )),
    }
}

fn names_an_average(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path).to_ascii_lowercase();
    last.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| AVERAGE_WORDS.contains(&w))
}

/// Resolves a selector: a weight set path, or a key prefix ending in `.`.
fn select(sets: &[WeightSet], s: &str) -> Result<Side, EmaErrorKind> {
    let available = || {
        sets.iter()
            .map(|s| {
                if s.path.is_empty() {
                    "(root)".to_string()
                } else {
                    s.path.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let path = if s == "(root)" { "" } else { s };
    if let Some(set) = set(sets, path) {
        return Ok(Side {
            origin: s.to_string(),
            tensors: strip_wrappers(set.tensors.clone()),
        });
    }
    if s.ends_with('.') {
        let hits: Vec<(&WeightSet, Named)> = sets
            .iter()
            .filter_map(|set| {
                let t: Named = set
                    .tensors
                    .iter()
                    .filter_map(|(n, t)| n.strip_prefix(s).map(|k| (k.to_string(), t.clone())))
                    .collect();
                (!t.is_empty()).then_some((set, t))
            })
            .collect();
        return match hits.len() {
            1 => Ok(Side {
                origin: s.to_string(),
                tensors: strip_wrappers(hits.into_iter().next().expect("one").1),
            }),
            0 => Err(EmaErrorKind::NoPrefix {
                prefix: s.to_string(),
                available: available(),
            }),
            _ => Err(EmaErrorKind::PrefixInSeveral {
                prefix: s.to_string(),
                sets: hits
                    .iter()
                    .map(|(set, _)| set.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        };
    }
    Err(EmaErrorKind::NoSet {
        name: s.to_string(),
        available: available(),
    })
}

#[cfg(test)]
mod tests {
    use super::names_an_average;

    #[test]
    fn average_names() {
        for p in [
            "ema",
            "model_ema",
            "ema_model",
            "state_dict_ema",
            "swa_model",
            "teacher",
            "x.shadow",
        ] {
            assert!(names_an_average(p), "{p}");
        }
        for p in ["model", "state_dict", "schema", "student", "temperature"] {
            assert!(!names_an_average(p), "{p}");
        }
    }
}
