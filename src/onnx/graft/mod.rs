//! `graft`: putting a checkpoint's EMA into an ONNX model that was exported from its raw weights
//! by any exporter, whatever the architecture. Each initializer is identified as a function of
//! raw tensors — the tensor itself by name ([`names`]), its values unchanged, reshaped or
//! transposed ([`values`]), or a Conv+BatchNorm fold ([`bnfold`]) — and replaced by the same
//! function of the EMA tensors; initializers from no weight are left alone. The model's bytes
//! are copied through otherwise ([`write`]), and the [`report`] says what happened to each.

pub mod bnfold;
pub mod drift;
pub mod error;
pub mod names;
pub mod report;
pub mod scan;
pub mod stdconv;
pub mod values;
pub mod weights;
pub mod write;

use std::fs::File;
use std::path::Path;

pub use error::{GraftError, GraftFault};
use report::{Entry, How};
use scan::{Data, FLOAT, FLOAT16, Init, Scanned};
use weights::{Weights, max_diff};

/// Operator inputs that hold weights: an initializer read there that matches nothing is an
/// error (unless allowed), where one read elsewhere (an `Add` of anchors) is a constant.
const WEIGHT_SLOTS: &[(&str, &[usize])] = &[
    ("Conv", &[1, 2]),
    ("ConvTranspose", &[1, 2]),
    ("Gemm", &[1, 2]),
    ("MatMul", &[0, 1]),
    ("BatchNormalization", &[1, 2, 3, 4]),
    ("LayerNormalization", &[1, 2]),
    ("InstanceNormalization", &[1, 2]),
    ("GroupNormalization", &[1, 2]),
    ("PRelu", &[1]),
    ("Gather", &[0]),
    ("Einsum", &[0, 1, 2]),
    ("LSTM", &[1, 2, 3]),
    ("GRU", &[1, 2, 3]),
    ("RNN", &[1, 2, 3]),
];

/// How one initializer is recomputed from a side's tensors.
#[derive(Clone, Debug)]
pub enum Recipe {
    /// A tensor, its axes permuted when `perm` is given, read in the initializer's shape.
    Copy {
        /// Key.
        key: String,
        /// Transpose.
        perm: Option<values::Perm>,
    },
    /// A tensor times a constant, read in the initializer's shape.
    Scale {
        /// Key.
        key: String,
        /// The constant.
        factor: f64,
    },
    /// A Conv weight standardized per output channel (timm's `StdConv2d`, `ScaledStdConv2d`).
    Standardized(stdconv::StdFold),
    /// A Conv weight with a BatchNorm folded in.
    FoldWeight(bnfold::WeightFold),
    /// A Conv bias with a BatchNorm folded in.
    FoldBias {
        /// The Conv's own bias, if it had one.
        bias: Option<String>,
        /// The BatchNorm.
        bn: bnfold::Bn,
        /// ε.
        eps: f64,
    },
}

impl Recipe {
    /// The values from `side` (`raw` or `ema`).
    pub fn compute(&self, side: &weights::Side) -> Result<Vec<f32>, GraftFault> {
        match self {
            Recipe::Copy { key, perm } => Ok(values::apply(&side.values(key)?, perm)),
            Recipe::Scale { key, factor } => Ok(side
                .values(key)?
                .iter()
                .map(|&x| (x as f64 * factor) as f32)
                .collect()),
            Recipe::Standardized(f) => stdconv::compute(side, f),
            Recipe::FoldWeight(f) => bnfold::fold_weight(side, &f.conv, &f.bn, f.eps),
            Recipe::FoldBias { bias, bn, eps } => {
                bnfold::fold_bias(side, bias.as_deref(), bn, *eps)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Recipe::Copy { key, perm: None } => key.clone(),
            Recipe::Copy { key, perm: Some(p) } => {
                format!("{key} as {:?} permuted {:?}", p.view, p.axes)
            }
            Recipe::Scale { key, factor } => format!("{factor} × {key}"),
            Recipe::Standardized(f) => format!(
                "{} standardized (eps {:e}){}",
                f.conv,
                f.eps,
                f.gain
                    .as_ref()
                    .map(|(k, c)| format!(" × {c} × {k}"))
                    .unwrap_or_default()
            ),
            Recipe::FoldWeight(f) => {
                format!("{} ⊗ BatchNorm {} (eps {:e})", f.conv, f.bn.prefix, f.eps)
            }
            Recipe::FoldBias { bias, bn, eps } => format!(
                "{} ⊕ BatchNorm {} (eps {eps:e})",
                bias.as_deref().unwrap_or("(no bias)"),
                bn.prefix
            ),
        }
    }
}

/// The ONNX being grafted: its layout (scanned through a map that only headers were read from,
/// dropped after the scan) and its file (data is read with positioned reads).
pub struct Source {
    file: File,
    /// The layout.
    pub scanned: Scanned,
}

/// Tolerance of a match relative to the largest magnitude: exact copies in f32/f64, the
/// rounding of the narrower types otherwise.
fn rtol(code: u64) -> f64 {
    match code {
        FLOAT16 => 1e-3,
        scan::BFLOAT16 => 8e-3,
        _ => 1e-6,
    }
}

fn dtype_name(code: u64) -> String {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        16 => "bfloat16",
        _ => "other",
    }
    .to_string()
}

fn decode(code: u64, b: &[u8]) -> Vec<f32> {
    match code {
        FLOAT => crate::convert::f32s_le(b).collect(),
        FLOAT16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        scan::BFLOAT16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        scan::DOUBLE => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8 bytes")) as f32)
            .collect(),
        _ => Vec::new(),
    }
}

/// `v` encoded as `code`'s little-endian elements (round to nearest even).
pub fn encode(code: u64, v: &[f32]) -> Vec<u8> {
    match code {
        FLOAT16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        scan::BFLOAT16 => v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
        scan::DOUBLE => v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

impl Source {
    /// Opens and scans the model (a regular file, at most 2 GiB as protobuf allows).
    pub fn open(path: &Path) -> Result<Source, GraftError> {
        let path_buf = || path.to_path_buf();
        let (file, len) = crate::io::open_regular(path).map_err(|source| GraftError::Open {
            path: path_buf(),
            source,
        })?;
        if len > 2 << 30 {
            return Err(GraftError::TooLarge {
                path: path_buf(),
                len,
            });
        }
        if len == 0 {
            return Err(GraftError::Empty { path: path_buf() });
        }
        // SAFETY: read-only map of a regular file; a file truncated meanwhile faults, and the
        // SIGBUS handler reports it as changed.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| GraftError::Map {
            path: path_buf(),
            source,
        })?;
        let _watch = crate::signals::watch_mapping(path, map.as_ptr(), map.len());
        let scanned = scan::scan(&map, path).map_err(|source| GraftError::Scan {
            path: path_buf(),
            source,
        })?;
        Ok(Source { file, scanned })
    }

    /// The initializer's element bytes (from the model file, or its external data file).
    pub fn bytes(&self, t: &Init) -> Result<Vec<u8>, GraftFault> {
        use std::os::unix::fs::FileExt;
        match &t.data {
            Data::Inline(r) => {
                let mut b = vec![0u8; r.len()];
                self.file
                    .read_exact_at(&mut b, r.start as u64)
                    .map_err(|source| GraftFault::InitializerRead {
                        name: t.name.clone(),
                        source,
                    })?;
                Ok(b)
            }
            Data::External(kv) => {
                let mut ext = crate::onnx::read::External::new(self.scanned.path.parent());
                Ok(ext.slice(&t.name, kv).map(<[u8]>::to_vec)?)
            }
            Data::Other => Ok(Vec::new()),
        }
    }

    /// The initializer as f32 values, when it is a floating tensor whose bytes fit its shape.
    fn floats(&self, t: &Init) -> Result<Option<Vec<f32>>, GraftFault> {
        let (Some(size), Some(n)) = (t.float_size(), t.numel()) else {
            return Ok(None);
        };
        if matches!(t.data, Data::Other) {
            return Ok(None);
        }
        let b = self.bytes(t)?;
        if b.len() != n * size {
            return Err(GraftFault::InitializerSize {
                name: t.name.clone(),
                len: b.len(),
                numel: n,
                size,
            });
        }
        Ok(Some(decode(t.code, &b)))
    }
}

/// What is done to each initializer.
pub struct Plan {
    /// Report rows, in file order.
    pub entries: Vec<Entry>,
    /// Recipes of the replaced ones.
    pub recipes: Vec<Option<Recipe>>,
}

/// Who reads each value: `Op[i]` per use.
fn uses(s: &Scanned) -> std::collections::HashMap<&str, Vec<(String, usize)>> {
    let mut m: std::collections::HashMap<&str, Vec<(String, usize)>> = Default::default();
    for n in &s.nodes {
        for (i, x) in n.inputs.iter().enumerate() {
            m.entry(x.as_str()).or_default().push((n.op.clone(), i));
        }
    }
    m
}

fn in_weight_slot(uses: &[(String, usize)]) -> bool {
    uses.iter().any(|(op, i)| {
        WEIGHT_SLOTS
            .iter()
            .any(|(o, slots)| o == op && slots.contains(i))
    })
}

/// Identifies every initializer of `src` against `w`.
pub fn plan(src: &Source, w: &Weights) -> Result<Plan, GraftFault> {
    let s = &src.scanned;
    let with_graph = |n: &&crate::onnx::proto::Node| {
        (n.attrs.iter()).any(|(_, a)| matches!(a, crate::onnx::proto::Attr::Graph))
    };
    if let Some(n) = s.nodes.iter().find(with_graph) {
        return Err(GraftFault::Subgraph {
            node: n.name.clone(),
            op: n.op.clone(),
        });
    }
    let uses = uses(s);
    let bns = bnfold::groups(&w.raw);
    let mut entries = Vec::with_capacity(s.inits.len());
    let mut recipes: Vec<Option<Recipe>> = vec![None; s.inits.len()];
    let mut weight_like = vec![false; s.inits.len()];
    for (i, t) in s.inits.iter().enumerate() {
        let used: &[(String, usize)] = uses
            .get(t.name.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let key = names::key_for(&t.name, w);
        weight_like[i] = t.float_size().is_some() && (in_weight_slot(used) || key.is_some());
        let mut e = Entry {
            name: t.name.clone(),
            dims: t.dims.clone(),
            dtype: dtype_name(t.code),
            how: How::Constant,
            source: String::new(),
            used_as: used.iter().map(|(op, k)| format!("{op}[{k}]")).collect(),
            match_error: None,
            max_change: None,
            also: Vec::new(),
        };
        if let Some(v) = src.floats(t)? {
            // One value repeated (the zero bias an exporter adds to a `batch_norm` without one)
            // carries no weight: unless named after one, it is a constant when nothing matches.
            if key.is_none() && v.windows(2).all(|p| p[0] == p[1]) {
                weight_like[i] = false;
            }
            let tol = rtol(t.code);
            if let Some((k, err)) = names::by_name(&t.name, &v, w, tol)? {
                e.how = How::Name;
                e.match_error = Some(err);
                recipes[i] = Some(Recipe::Copy { key: k, perm: None });
            } else {
                match values::by_value(&t.dims, &v, w, tol, key.as_deref())? {
                    values::Found::One(h, also) => {
                        e.how = How::Value;
                        e.match_error = Some(h.error);
                        e.also = also;
                        recipes[i] = Some(Recipe::Copy {
                            key: h.key,
                            perm: h.perm,
                        });
                    }
                    values::Found::Ambiguous(keys) => {
                        e.how = How::Ambiguous;
                        e.also = keys;
                        weight_like[i] = true;
                    }
                    values::Found::None => {}
                }
            }
        }
        entries.push(e);
    }
    fold_convs(src, w, &bns, &mut entries, &mut recipes)?;
    // Last, for what would be unmatched: a raw tensor times a constant the exporter folded in.
    for (i, t) in s.inits.iter().enumerate() {
        if entries[i].how != How::Constant || !weight_like[i] {
            continue;
        }
        let Some(v) = src.floats(t)? else { continue };
        if let Some(f) = stdconv::find(&t.dims, &v, w, rtol(t.code).max(1e-5))? {
            entries[i].how = How::Value;
            entries[i].match_error = Some(f.error);
            recipes[i] = Some(Recipe::Standardized(f));
            continue;
        }
        match values::by_multiple(&v, w, rtol(t.code).max(1e-6))? {
            Ok(Some((key, factor, err))) => {
                entries[i].how = How::Value;
                entries[i].match_error = Some(err);
                recipes[i] = Some(Recipe::Scale { key, factor });
            }
            Ok(None) => {}
            Err(keys) => {
                entries[i].how = How::Ambiguous;
                entries[i].also = keys;
            }
        }
    }
    // A constant holding a raw tensor's values in an order no transform above explains is a
    // weight all the same: unmatched, never silently left raw.
    for (i, t) in s.inits.iter().enumerate() {
        if entries[i].how != How::Constant || weight_like[i] {
            continue;
        }
        let Some(v) = src.floats(t)? else { continue };
        if v.windows(2).all(|p| p[0] == p[1]) {
            continue;
        }
        let p = weights::Print::of(&v);
        let same: Vec<String> = (w
            .prints
            .get(&v.len())
            .map(Vec::as_slice)
            .unwrap_or_default())
        .iter()
        .filter(|(_, q)| q.may_equal(&p, rtol(t.code) * 4.0))
        .map(|(k, _)| k.clone())
        .collect();
        if !same.is_empty() {
            weight_like[i] = true;
            entries[i].also = same;
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if e.how == How::Constant && weight_like[i] {
            e.how = How::Unmatched;
        }
        if let Some(r) = &recipes[i] {
            e.source = r.describe();
        }
    }
    Ok(Plan { entries, recipes })
}

/// Conv nodes whose weight matched nothing: BatchNorm folds, then their biases.
fn fold_convs(
    src: &Source,
    w: &Weights,
    bns: &[bnfold::Bn],
    entries: &mut [Entry],
    recipes: &mut [Option<Recipe>],
) -> Result<(), GraftFault> {
    let s = &src.scanned;
    let index: std::collections::HashMap<&str, usize> = s
        .inits
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    for n in s.nodes.iter().filter(|n| n.op == "Conv") {
        let Some(&wi) = n.inputs.get(1).and_then(|x| index.get(x.as_str())) else {
            continue;
        };
        if entries[wi].how == How::Constant {
            let t = &s.inits[wi];
            let Some(v) = src.floats(t)? else { continue };
            let near = names::key_for(&t.name, w).unwrap_or_else(|| t.name.clone());
            let found = bnfold::find_weight(&t.dims, &v, w, bns, rtol(t.code).max(1e-5), &near)?;
            if let Some(f) = found.first() {
                let first = Recipe::FoldWeight(f.clone());
                let ema = first.compute(&w.ema)?;
                // Several folds fit (identical raw tensors): fine when their EMAs agree.
                let mut conflict = Vec::new();
                for g in &found[1..] {
                    let other = Recipe::FoldWeight(g.clone()).compute(&w.ema)?;
                    let limit = 1e-5 * weights::max_abs(&ema) + f32::MIN_POSITIVE as f64;
                    if max_diff(&ema, &other) > limit {
                        conflict.push(format!("{} ⊗ {}", g.conv, g.bn.prefix));
                    }
                }
                if conflict.is_empty() {
                    entries[wi].how = How::BnFold;
                    entries[wi].match_error = Some(f.error);
                    recipes[wi] = Some(first);
                } else {
                    entries[wi].how = How::Ambiguous;
                    conflict.insert(0, format!("{} ⊗ {}", f.conv, f.bn.prefix));
                    entries[wi].also = conflict;
                }
            }
        }
        let Some(Recipe::FoldWeight(f)) = recipes[wi].clone() else {
            continue;
        };
        let Some(&bi) = n.inputs.get(2).and_then(|x| index.get(x.as_str())) else {
            continue;
        };
        // The bias of a folded Conv is the fold's, even where it also equals a raw tensor (β,
        // when the running mean is ~0): only an initializer shared with other nodes keeps its
        // earlier match.
        let shared = s
            .nodes
            .iter()
            .filter(|m| m.inputs.iter().any(|x| *x == s.inits[bi].name))
            .count()
            > 1;
        if !matches!(entries[bi].how, How::Constant | How::Value | How::Name)
            || (shared && entries[bi].how != How::Constant)
        {
            continue;
        }
        let t = &s.inits[bi];
        let Some(v) = src.floats(t)? else { continue };
        if let Some((bias, err)) = bnfold::find_bias(&v, w, &f.conv, &f.bn, f.eps, rtol(t.code))? {
            entries[bi].how = How::BnFold;
            entries[bi].also.clear();
            entries[bi].match_error = Some(err);
            recipes[bi] = Some(Recipe::FoldBias {
                bias,
                bn: f.bn.clone(),
                eps: f.eps,
            });
        }
    }
    Ok(())
}

impl Plan {
    /// Whether an initializer is unmatched or ambiguous.
    pub fn has_unmatched(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.how, How::Unmatched | How::Ambiguous))
    }

    /// Computes each replaced initializer's EMA values once to record how far it moves
    /// (nothing is kept: writing recomputes them).
    pub fn measure_changes(&mut self, src: &Source, w: &Weights) -> Result<(), GraftFault> {
        for (i, r) in self.recipes.iter().enumerate() {
            let Some(r) = r else { continue };
            let t = &src.scanned.inits[i];
            let new = self.values(i, r, t, w)?;
            let old = src.floats(t)?.unwrap_or_default();
            self.entries[i].max_change = Some(max_diff(&new, &old));
        }
        Ok(())
    }

    fn values(&self, i: usize, r: &Recipe, t: &Init, w: &Weights) -> Result<Vec<f32>, GraftFault> {
        let v = r.compute(&w.ema)?;
        if Some(v.len()) != t.numel() {
            return Err(GraftFault::EmaCount {
                name: t.name.clone(),
                recipe: self.entries[i].source.clone(),
                got: v.len(),
                dims: t.dims.clone(),
            });
        }
        Ok(v)
    }

    /// Streams the grafted model to `out`, with `metadata` added; returns its length.
    pub fn write(
        &self,
        src: &Source,
        w: &Weights,
        metadata: &[(String, String)],
        out: &mut impl std::io::Write,
    ) -> Result<u64, GraftFault> {
        let s = &src.scanned;
        let fates: Vec<write::Fate> = s
            .inits
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let size = t.float_size().unwrap_or(1) as u64;
                Ok(match (&self.recipes[i], &t.data) {
                    (Some(_), _) => write::Fate::Rewrite(t.numel().unwrap_or(0) as u64 * size),
                    // External data is brought inline: the output may live elsewhere, so a
                    // reference kept as it is could dangle; data that cannot be read is an error.
                    (None, Data::External(_)) => write::Fate::Rewrite(src.bytes(t)?.len() as u64),
                    (None, _) => write::Fate::Keep,
                })
            })
            .collect::<Result<_, GraftFault>>()?;
        let mut produce = |i: usize| -> Result<Vec<u8>, GraftFault> {
            let t = &s.inits[i];
            match &self.recipes[i] {
                Some(r) => Ok(encode(t.code, &self.values(i, r, t, w)?)),
                None => src.bytes(t),
            }
        };
        write::write(&src.file, s, &fates, &mut produce, metadata, out)
    }
}
