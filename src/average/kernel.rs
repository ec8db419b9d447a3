//! The element loops of `average`, one chunk at a time: plain slices of f32 (or f64 for weighted
//! sums) so the compiler vectorises them, compiled a second time for AVX2 and chosen at run time.
//! Vector lanes round each element exactly as scalar code does (IEEE division and products, no
//! fused multiply-add), so the results stay bit-identical to PyTorch's.

use crate::tensor::DType;

/// How one chunk of an input is folded into the accumulator.
#[derive(Clone, Copy, Debug)]
pub(super) enum Update {
    /// `a + (x − a) / n1` (AveragedModel's running mean; `n1` = inputs averaged so far + 1).
    Mean(f32),
    /// `keep·a + take·x` (the EMA replay).
    Ema(f32, f32),
}

/// Applies `u` to `acc` with `x` (same length).
pub(super) fn update(acc: &mut [f32], x: &[f32], u: Update) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the feature was detected at run time.
        return unsafe { update_avx2(acc, x, u) };
    }
    update_body(acc, x, u);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn update_avx2(acc: &mut [f32], x: &[f32], u: Update) {
    update_body(acc, x, u);
}

#[inline(always)]
fn update_body(acc: &mut [f32], x: &[f32], u: Update) {
    match u {
        Update::Mean(n1) => {
            for (a, &v) in acc.iter_mut().zip(x) {
                *a += (v - *a) / n1;
            }
        }
        Update::Ema(keep, take) => {
            for (a, &v) in acc.iter_mut().zip(x) {
                *a = keep * *a + take * v;
            }
        }
    }
}

/// `acc += w·x` in f64 (weighted sums).
pub(super) fn weighted(acc: &mut [f64], x: &[f32], w: f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the feature was detected at run time.
        return unsafe { weighted_avx2(acc, x, w) };
    }
    weighted_body(acc, x, w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn weighted_avx2(acc: &mut [f64], x: &[f32], w: f64) {
    weighted_body(acc, x, w);
}

#[inline(always)]
fn weighted_body(acc: &mut [f64], x: &[f32], w: f64) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * f64::from(v);
    }
}

/// The elements of `bytes` (stored as `dtype`: f32, f16 or bf16, little-endian) as f32: the
/// bytes themselves when they are f32 and aligned, else widened (exactly) into `scratch`.
pub(super) fn as_f32<'a>(dtype: DType, bytes: &'a [u8], scratch: &'a mut Vec<f32>) -> &'a [f32] {
    if dtype == DType::F32 && cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid f32; `align_to` only yields the aligned middle.
        let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
        if head.is_empty() && tail.is_empty() {
            return mid;
        }
    }
    scratch.clear();
    match dtype {
        DType::F16 => scratch.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        // bf16 is the top half of an f32.
        DType::BF16 => scratch.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)),
        ),
        _ => scratch.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
    }
    scratch
}

/// `acc` as the bytes of `dtype` (f32, f16 or bf16, little-endian), rounding once from f32:
/// f32 elements are their own bytes on a little-endian machine, others are encoded into `out`.
pub(super) fn encode<'a>(acc: &'a [f32], dtype: DType, out: &'a mut Vec<u8>) -> &'a [u8] {
    out.clear();
    match dtype {
        DType::F16 => {
            for &a in acc {
                out.extend_from_slice(&half::f16::from_f32(a).to_le_bytes());
            }
        }
        DType::BF16 => {
            for &a in acc {
                out.extend_from_slice(&half::bf16::from_f32(a).to_le_bytes());
            }
        }
        _ if cfg!(target_endian = "little") => {
            // SAFETY: f32 has no padding and every byte of it is initialised; u8 has alignment
            // 1; the slice covers exactly `acc`'s memory, borrowed for as long as `acc`.
            return unsafe {
                std::slice::from_raw_parts(acc.as_ptr().cast::<u8>(), std::mem::size_of_val(acc))
            };
        }
        _ => {
            for &a in acc {
                out.extend_from_slice(&a.to_le_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_scalar_loops_round_alike() {
        let x: Vec<f32> = (0..1037).map(|i| (i as f32).sin() * 3.7).collect();
        let mut a: Vec<f32> = (0..1037).map(|i| (i as f32).cos()).collect();
        let mut b = a.clone();
        update(&mut a, &x, Update::Mean(3.0));
        update_body(&mut b, &x, Update::Mean(3.0));
        assert_eq!(a, b);
        update(&mut a, &x, Update::Ema(0.9, 0.1));
        update_body(&mut b, &x, Update::Ema(0.9, 0.1));
        assert_eq!(a, b);
    }

    #[test]
    fn unaligned_and_half_bytes_are_widened() {
        let v = [1.5f32, -2.25];
        let mut bytes = vec![0u8];
        for x in v {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let mut s = Vec::new();
        assert_eq!(as_f32(DType::F32, &bytes[1..], &mut s), &v);
        let h: Vec<u8> = v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(as_f32(DType::F16, &h, &mut s), &v);
        let mut out = Vec::new();
        let le: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(encode(&v, DType::F32, &mut out), &le[..]);
        assert_eq!(encode(&v, DType::F16, &mut out), &h[..]);
    }
}
