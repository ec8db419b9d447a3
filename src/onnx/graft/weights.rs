//! The checkpoint side of a graft: the raw weights the ONNX was exported from and their EMA
//! counterparts under the same names, read as f32 one tensor at a time (positioned reads, so a
//! large checkpoint never becomes resident), small ones cached.

use std::cell::RefCell;
use std::collections::HashMap;

use super::GraftFault;
use crate::convert::to_f32_vec;
use crate::ema::Named;
use crate::tensor::Tensor;

/// Tensors up to this many elements stay cached once read (BatchNorm vectors, biases).
const CACHE_NUMEL: usize = 1 << 16;
/// At most this many cached elements in all.
const CACHE_TOTAL: usize = 16 << 20;

/// Sum, sum of squares and element count: unchanged by transposes and reshapes, so they select
/// the few raw tensors worth comparing with an initializer element by element.
#[derive(Clone, Copy, Debug)]
pub struct Print {
    /// Elements.
    pub numel: usize,
    /// Σx.
    pub sum: f64,
    /// Σ|x|.
    pub l1: f64,
    /// Σx².
    pub sumsq: f64,
    /// max |x|.
    pub maxabs: f64,
}

impl Print {
    /// The fingerprint of `v`.
    pub fn of(v: &[f32]) -> Print {
        let (mut sum, mut l1, mut sumsq, mut maxabs) = (0f64, 0f64, 0f64, 0f64);
        for &x in v {
            let x = x as f64;
            sum += x;
            l1 += x.abs();
            sumsq += x * x;
            maxabs = maxabs.max(x.abs());
        }
        Print {
            numel: v.len(),
            sum,
            l1,
            sumsq,
            maxabs,
        }
    }

    /// Whether `other` could hold the same values, each element within `rtol` of its own
    /// magnitude (rounding to a narrower type); the sums then differ by at most `rtol`·Σ|x|.
    pub fn may_equal(&self, other: &Print, rtol: f64) -> bool {
        let l1 = self.l1.max(other.l1);
        let sq = self.sumsq.max(other.sumsq);
        // f64 summation in another order adds ~1e-16 relative; 1e-12 covers it.
        self.numel == other.numel
            && (self.sum - other.sum).abs() <= (rtol + 1e-12) * l1 + 1e-30
            && (self.sumsq - other.sumsq).abs() <= (2.0 * rtol + rtol * rtol + 1e-12) * sq + 1e-30
    }
}

/// A tensor's values, shared with the cache.
pub type Values = std::rc::Rc<Vec<f32>>;

/// One side's tensors by name.
pub struct Side {
    names: Vec<String>,
    tensors: HashMap<String, Tensor>,
    /// Cached elements in all, and the cached tensors.
    cache: RefCell<(usize, HashMap<String, Values>)>,
}

impl Side {
    /// The floating tensors of `named`.
    pub fn new(named: &Named) -> Side {
        let mut names = Vec::new();
        let mut tensors = HashMap::new();
        for (n, t) in named {
            if t.dtype().is_float() && !tensors.contains_key(n) {
                names.push(n.clone());
                tensors.insert(n.clone(), t.clone());
            }
        }
        Side {
            names,
            tensors,
            cache: RefCell::new((0, HashMap::new())),
        }
    }

    /// Names in the checkpoint's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The tensor's shape.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape())
    }

    /// Whether `key` is a floating tensor of this side.
    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor's values as f32 (row-major).
    pub fn values(&self, key: &str) -> Result<Values, GraftFault> {
        if let Some(v) = self.cache.borrow().1.get(key) {
            return Ok(v.clone());
        }
        let t = self.tensors.get(key).ok_or_else(|| GraftFault::NoTensor {
            key: key.to_string(),
        })?;
        let v = to_f32_vec(t)
            .map_err(|source| GraftFault::TensorRead {
                key: key.to_string(),
                source,
            })?
            .ok_or_else(|| GraftFault::NotNumbers {
                key: key.to_string(),
            })?;
        let v = std::rc::Rc::new(v);
        let mut c = self.cache.borrow_mut();
        if v.len() <= CACHE_NUMEL && c.0 + v.len() <= CACHE_TOTAL {
            c.0 += v.len();
            c.1.insert(key.to_string(), v.clone());
        }
        Ok(v)
    }
}

/// Both sides: raw (what the ONNX was exported from) and EMA (what goes in), under the raw
/// model's names.
pub struct Weights {
    /// The raw weights.
    pub raw: Side,
    /// The EMA, folded onto the raw names (buffers a layout does not average come from raw).
    pub ema: Side,
    /// Raw fingerprints, by element count.
    pub prints: HashMap<usize, Vec<(String, Print)>>,
}

impl Weights {
    /// Reads every raw tensor once to fingerprint it.
    pub fn new(raw: &Named, ema: &Named) -> Result<Weights, GraftFault> {
        let raw = Side::new(raw);
        let ema = Side::new(ema);
        let mut prints: HashMap<usize, Vec<(String, Print)>> = HashMap::new();
        for k in raw.names() {
            let p = Print::of(&raw.values(k)?);
            prints.entry(p.numel).or_default().push((k.clone(), p));
        }
        Ok(Weights { raw, ema, prints })
    }
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// `v` (of `shape`) with its axes permuted: output axis `i` is input axis `perm[i]`.
pub fn permute(v: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    if let ([r, c], [1, 0]) = (shape, perm) {
        return transpose(v, *r, *c);
    }
    let st = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let mut out = Vec::with_capacity(v.len());
    let mut idx = vec![0usize; out_shape.len()];
    for _ in 0..v.len() {
        let at: usize = idx.iter().zip(&out_st).map(|(i, s)| i * s).sum();
        out.push(v[at]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// A row-major `r`×`c` matrix transposed, in cache-sized tiles (Linear weights for `MatMul`).
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; v.len()];
    for i0 in (0..r).step_by(TILE) {
        for j0 in (0..c).step_by(TILE) {
            for i in i0..(i0 + TILE).min(r) {
                for j in j0..(j0 + TILE).min(c) {
                    out[j * r + i] = v[i * c + j];
                }
            }
        }
    }
    out
}

/// Every permutation of `0..n` other than the identity (n ≤ 5; larger ranks are not searched).
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn go(prefix: &mut Vec<usize>, n: usize, out: &mut Vec<Vec<usize>>) {
        if prefix.len() == n {
            out.push(prefix.clone());
            return;
        }
        for i in 0..n {
            if !prefix.contains(&i) {
                prefix.push(i);
                go(prefix, n, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    if n <= 5 {
        go(&mut Vec::new(), n, &mut out);
    }
    out.retain(|p| p.iter().enumerate().any(|(i, &x)| i != x));
    out
}

/// max |a − b| (infinite when the lengths differ).
pub fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

/// max |x|.
pub fn max_abs(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).abs()).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_transposes() {
        let v: Vec<f32> = (0..6).map(|x| x as f32).collect();
        assert_eq!(permute(&v, &[2, 3], &[1, 0]), [0., 3., 1., 4., 2., 5.]);
        let big: Vec<f32> = (0..70 * 45).map(|x| x as f32).collect();
        let t = permute(&big, &[70, 45], &[1, 0]);
        assert_eq!(permute(&t, &[45, 70], &[1, 0]), big);
        assert_eq!(t[70 * 3 + 5], big[45 * 5 + 3]);
        let cube: Vec<f32> = (0..24).map(|x| x as f32).collect();
        assert_eq!(permute(&cube, &[2, 3, 4], &[2, 0, 1])[..3], [0., 4., 8.]);
        assert_eq!(permutations(3).len(), 5);
        assert!(permutations(6).is_empty());
    }

    #[test]
    fn prints_ignore_order() {
        let a = Print::of(&[1.0, -2.0, 3.5]);
        let b = Print::of(&[3.5, 1.0, -2.0]);
        assert!(a.may_equal(&b, 1e-6));
        assert!(!a.may_equal(&Print::of(&[1.0, -2.0, 3.6]), 1e-6));
    }
}
