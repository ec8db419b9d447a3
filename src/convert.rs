//! Reading tensor elements as numbers, whatever their stored dtype.

use half::{bf16, f16};

use crate::tensor::{DType, Tensor};

/// Decodes little-endian elements of `dtype` from `bytes`, calling `f` with each as f64.
/// Returns `false` for dtypes that have no real value (complex, float8).
pub fn for_each_f64(dtype: DType, bytes: &[u8], mut f: impl FnMut(f64)) -> bool {
    macro_rules! each {
        ($n:expr, $conv:expr) => {{
            for c in bytes.chunks_exact($n) {
                f($conv(c.try_into().expect("chunk size")));
            }
        }};
    }
    match dtype {
        DType::F64 => each!(8, |a: [u8; 8]| f64::from_le_bytes(a)),
        DType::F32 => each!(4, |a: [u8; 4]| f32::from_le_bytes(a) as f64),
        DType::F16 => each!(2, |a: [u8; 2]| f16::from_le_bytes(a).to_f64()),
        DType::BF16 => each!(2, |a: [u8; 2]| bf16::from_le_bytes(a).to_f64()),
        DType::I64 => each!(8, |a: [u8; 8]| i64::from_le_bytes(a) as f64),
        DType::I32 => each!(4, |a: [u8; 4]| i32::from_le_bytes(a) as f64),
        DType::I16 => each!(2, |a: [u8; 2]| i16::from_le_bytes(a) as f64),
        DType::I8 => each!(1, |a: [u8; 1]| a[0] as i8 as f64),
        DType::U64 => each!(8, |a: [u8; 8]| u64::from_le_bytes(a) as f64),
        DType::U32 => each!(4, |a: [u8; 4]| u32::from_le_bytes(a) as f64),
        DType::U16 => each!(2, |a: [u8; 2]| u16::from_le_bytes(a) as f64),
        DType::U8 | DType::Bool => each!(1, |a: [u8; 1]| a[0] as f64),
        DType::F8E4M3 | DType::F8E5M2 | DType::C64 | DType::C128 => return false,
    }
    true
}

/// All elements as f64 in row-major order, or `None` for dtypes without a real value (or a
/// compressed storage that cannot be decompressed).
pub fn to_f64_vec(t: &Tensor) -> Option<Vec<f64>> {
    let bytes = t.to_contiguous_bytes().ok()?;
    let mut out = Vec::with_capacity(t.numel());
    for_each_f64(t.dtype, &bytes, |x| out.push(x)).then_some(out)
}

/// The value of a one-element tensor.
pub fn scalar_f64(t: &Tensor) -> Option<f64> {
    if t.numel() != 1 {
        return None;
    }
    to_f64_vec(t)?.first().copied()
}

/// Appends `bytes` (elements of `src`) converted to `dst` to `out`. Both must be among f64, f32,
/// f16 and bf16; rounding is to nearest-even, as torch's `.to(dtype)` does.
pub fn convert_float(src: DType, bytes: &[u8], dst: DType, out: &mut Vec<u8>) {
    out.reserve(bytes.len() / src.size() * dst.size());
    let push = |out: &mut Vec<u8>, x: f64| match dst {
        DType::F64 => out.extend_from_slice(&x.to_le_bytes()),
        DType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
        DType::F16 => out.extend_from_slice(&f16::from_f64(x).to_le_bytes()),
        DType::BF16 => out.extend_from_slice(&bf16::from_f64(x).to_le_bytes()),
        other => unreachable!("convert_float to {other}"),
    };
    // f32 -> f16/bf16 must round once from the f32 value; widening to f64 first is exact.
    for_each_f64(src, bytes, |x| push(out, x));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_conversion_rounds_to_nearest_even() {
        let mut out = Vec::new();
        // 1 + 2^-11 is a tie between two f16 values; nearest-even gives 1.0.
        let x = 1.0f32 + f32::powi(2.0, -11);
        convert_float(DType::F32, &x.to_le_bytes(), DType::F16, &mut out);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]), f16::from_f32(1.0));
        out.clear();
        convert_float(
            DType::F16,
            &f16::from_f32(0.5).to_le_bytes(),
            DType::BF16,
            &mut out,
        );
        assert_eq!(bf16::from_le_bytes([out[0], out[1]]).to_f32(), 0.5);
    }
}
