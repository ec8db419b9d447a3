//! The accumulation loop of `diff`: elementwise statistics of two tensors in f64, written with
//! eight independent lanes so the compiler vectorises it, and fed by positioned reads of both
//! tensors in step.

use super::Side;
use crate::tensor::{DType, Tensor};

const LANES: usize = 8;
/// Bytes read per tensor per step.
const CHUNK_BYTES: usize = 4 << 20;

/// Sums over all elements of a pair.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sums {
    /// max |a − b| (NaN when any difference is NaN).
    pub max_abs: f64,
    /// Σ |a − b|.
    pub sum_abs: f64,
    /// Σ (a − b)².
    pub dd: f64,
    /// Σ a².
    pub aa: f64,
    /// Σ b².
    pub bb: f64,
    /// Σ ab.
    pub ab: f64,
}

#[derive(Default)]
struct Lanes {
    max: [f64; LANES],
    sum: [f64; LANES],
    dd: [f64; LANES],
    aa: [f64; LANES],
    bb: [f64; LANES],
    ab: [f64; LANES],
}

impl Lanes {
    #[inline(always)]
    fn add(&mut self, i: usize, x: f64, y: f64) {
        let d = x - y;
        let ad = d.abs();
        self.max[i] = self.max[i].max(ad);
        self.sum[i] += ad;
        self.dd[i] += d * d;
        self.aa[i] += x * x;
        self.bb[i] += y * y;
        self.ab[i] += x * y;
    }

    fn finish(&self) -> Sums {
        let s = |v: &[f64; LANES]| v.iter().sum::<f64>();
        let sum_abs = s(&self.sum);
        Sums {
            // f64::max drops NaN; a NaN difference still poisons the sum, so restore it here.
            max_abs: if sum_abs.is_nan() {
                f64::NAN
            } else {
                self.max.iter().cloned().fold(0.0, f64::max)
            },
            sum_abs,
            dd: s(&self.dd),
            aa: s(&self.aa),
            bb: s(&self.bb),
            ab: s(&self.ab),
        }
    }
}

/// Decodes element `i` of a little-endian chunk.
#[inline(always)]
fn get(dtype: DType, b: &[u8], i: usize) -> f64 {
    match dtype {
        DType::F32 => {
            f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) as f64
        }
        DType::F16 => half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f64(),
        DType::BF16 => half::bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f64(),
        _ => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[8 * i..8 * i + 8]);
            f64::from_le_bytes(a)
        }
    }
}

/// Decodes eight elements from exactly `8 × size` bytes.
#[inline(always)]
fn decode8(dtype: DType, b: &[u8]) -> [f64; LANES] {
    let mut out = [0.0; LANES];
    match dtype {
        DType::F32 => {
            for (o, x) in out.iter_mut().zip(crate::convert::f32s_le(b)) {
                *o = x as f64;
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f64();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                // bf16 is the top half of an f32.
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64;
            }
        }
        _ => {
            for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
                *o = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            }
        }
    }
    out
}

/// Accumulates one chunk pair, with AVX2 when the processor has it (the body is the same; the
/// attribute only lets the compiler use wider vectors).
fn chunk<const A: u8, const B: u8>(lanes: &mut Lanes, a: &[u8], b: &[u8], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the feature was detected at run time.
        return unsafe { chunk_avx2::<A, B>(lanes, a, b, n) };
    }
    chunk_body::<A, B>(lanes, a, b, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chunk_avx2<const A: u8, const B: u8>(lanes: &mut Lanes, a: &[u8], b: &[u8], n: usize) {
    chunk_body::<A, B>(lanes, a, b, n)
}

/// Monomorphised per dtype pair so the decode is inlined.
#[inline(always)]
fn chunk_body<const A: u8, const B: u8>(lanes: &mut Lanes, a: &[u8], b: &[u8], n: usize) {
    let (da, db) = (code(A), code(B));
    let (sa, sb) = (da.size() * LANES, db.size() * LANES);
    let full = n / LANES;
    for (ca, cb) in a[..full * sa]
        .chunks_exact(sa)
        .zip(b[..full * sb].chunks_exact(sb))
    {
        let (x, y) = (decode8(da, ca), decode8(db, cb));
        for l in 0..LANES {
            lanes.add(l, x[l], y[l]);
        }
    }
    for j in full * LANES..n {
        lanes.add(j % LANES, get(da, a, j), get(db, b, j));
    }
}

const fn code(c: u8) -> DType {
    match c {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::BF16,
        _ => DType::F64,
    }
}

fn code_of(d: DType) -> Option<u8> {
    Some(match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::F64 => 3,
        _ => return None,
    })
}

/// Reads element range `[start, end)` of `t` as bytes into `buf`.
fn read(
    t: &Tensor,
    start: usize,
    end: usize,
    buf: &mut Vec<u8>,
    gathered: &Option<Vec<u8>>,
) -> std::io::Result<()> {
    let es = t.dtype().size();
    if let Some(all) = gathered {
        buf.clear();
        buf.extend_from_slice(&all[start * es..end * es]);
        return Ok(());
    }
    let range = t
        .contiguous_range()
        .expect("non-contiguous tensors are gathered");
    let s = range.start + start * es;
    t.storage().read_into(s..s + (end - start) * es, buf)
}

/// A positioned read past the end of the input means the file shrank after it was opened.
fn shrank(e: std::io::Error) -> std::io::Error {
    if e.kind() != std::io::ErrorKind::UnexpectedEof {
        return e;
    }
    std::io::Error::new(
        e.kind(),
        "file changed while reading (it now ends before this tensor does)",
    )
}

/// Statistics of `a` against `b` (same shape, floating dtypes); `Ok(None)` for dtypes it cannot
/// decode. A read that fails (an input that shrank or changed while being read) is an error that
/// names the side, never a tensor quietly left out.
pub fn sums(a: &Tensor, b: &Tensor) -> Result<Option<Sums>, (Side, std::io::Error)> {
    let (Some(ca), Some(cb)) = (code_of(a.dtype()), code_of(b.dtype())) else {
        return Ok(None);
    };
    let n = a.numel();
    let gather = |t: &Tensor| -> std::io::Result<Option<Vec<u8>>> {
        if t.is_contiguous() {
            return Ok(None);
        }
        Ok(Some(t.to_contiguous_bytes()?.into_owned()))
    };
    let ga = gather(a).map_err(|e| (Side::Subject, e))?;
    let gb = gather(b).map_err(|e| (Side::Reference, e))?;
    let step = CHUNK_BYTES / a.dtype().size().max(b.dtype().size());
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    let mut lanes = Lanes::default();
    let mut start = 0;
    while start < n {
        let end = (start + step).min(n);
        read(a, start, end, &mut ba, &ga).map_err(|e| (Side::Subject, shrank(e)))?;
        read(b, start, end, &mut bb, &gb).map_err(|e| (Side::Reference, shrank(e)))?;
        let m = end - start;
        match (ca, cb) {
            (0, 0) => chunk::<0, 0>(&mut lanes, &ba, &bb, m),
            (1, 1) => chunk::<1, 1>(&mut lanes, &ba, &bb, m),
            (2, 2) => chunk::<2, 2>(&mut lanes, &ba, &bb, m),
            (3, 3) => chunk::<3, 3>(&mut lanes, &ba, &bb, m),
            (1, 0) => chunk::<1, 0>(&mut lanes, &ba, &bb, m),
            (0, 1) => chunk::<0, 1>(&mut lanes, &ba, &bb, m),
            _ => {
                for i in 0..m {
                    lanes.add(i % LANES, get(a.dtype(), &ba, i), get(b.dtype(), &bb, i));
                }
            }
        }
        start = end;
    }
    Ok(Some(lanes.finish()))
}
