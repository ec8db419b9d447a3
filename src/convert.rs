//! Reading tensor elements as numbers, whatever their stored dtype.

use half::{bf16, f16};

use crate::tensor::{DType, Tensor};

/// The little-endian f32 values in `bytes`, in order (a trailing partial element is not one:
/// callers check lengths against shapes). The one decoding of f32 bytes outside the hot kernels.
pub fn f32s_le(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

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
        DType::F32 => f32s_le(bytes).for_each(|x| f(x as f64)),
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

/// All elements as f64 in row-major order, `Ok(None)` for dtypes without a real value, the
/// error when the bytes cannot be read (a compressed storage that does not decompress).
pub fn to_f64_vec(t: &Tensor) -> std::io::Result<Option<Vec<f64>>> {
    let bytes = t.to_contiguous_bytes()?;
    let mut out = Vec::with_capacity(t.numel());
    Ok(for_each_f64(t.dtype(), &bytes, |x| out.push(x)).then_some(out))
}

/// All elements as f32 in row-major order (f16/bf16 widen exactly), `Ok(None)` for dtypes without
/// a real value, the error when the bytes cannot be read. Mapped bytes are fetched with positioned reads ([`Tensor::for_each_chunk`]), so
/// reading a whole checkpoint tensor by tensor leaves none of it resident; a file that cannot be
/// read there is read through the map (where a truncated file is caught as a signal).
pub fn to_f32_vec(t: &Tensor) -> std::io::Result<Option<Vec<f32>>> {
    let mut out = Vec::with_capacity(t.numel());
    let mut real = true;
    let streamed = t.for_each_chunk(|c| {
        real &= extend_f32(t.dtype(), c, &mut out);
        Ok(())
    });
    if streamed.is_err() {
        out.clear();
        let bytes = t.to_contiguous_bytes()?;
        real = extend_f32(t.dtype(), &bytes, &mut out);
    }
    Ok(real.then_some(out))
}

/// Appends `bytes` (elements of `dtype`) to `out` as f32. f32 and f16 (the dtypes of every
/// checkpoint's weights) take direct paths, f16 a block at a time through `half`'s vectorised
/// conversion: the element-by-element f64 route was a fifth of a large export's CPU time.
/// Both widenings are exact, so the values are those of the f64 route.
fn extend_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) -> bool {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    const BLOCK: usize = 1024;
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|a| f32::from_le_bytes(a.try_into().expect("chunk size"))),
        ),
        DType::F16 => {
            let mut bits = [0u16; BLOCK];
            for block in bytes.chunks(2 * BLOCK) {
                let n = block.len() / 2;
                for (b, a) in bits.iter_mut().zip(block.chunks_exact(2)) {
                    *b = u16::from_le_bytes([a[0], a[1]]);
                }
                let start = out.len();
                out.resize(start + n, 0.0);
                let halves: &[f16] = bits[..n].reinterpret_cast();
                halves.convert_to_f32_slice(&mut out[start..]);
            }
        }
        _ => return for_each_f64(dtype, bytes, |x| out.push(x as f32)),
    }
    true
}

/// The value of a one-element tensor; `None` also when its bytes cannot be read (it is
/// metadata, a step count or a decay, that the caller can do without).
pub fn scalar_f64(t: &Tensor) -> Option<f64> {
    if t.numel() != 1 {
        return None;
    }
    to_f64_vec(t).ok()??.first().copied()
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

    fn mapped(bytes: &[u8], range: std::ops::Range<usize>) -> crate::tensor::Buffer {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        // SAFETY: a private temporary file nothing else writes.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        crate::tensor::Buffer::Mapped {
            map: std::sync::Arc::new(crate::tensor::MappedFile::new(map, file)),
            range,
        }
    }

    #[test]
    fn direct_f32_paths_equal_the_f64_route() {
        let every_f16: Vec<u8> = (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect();
        let f32s: Vec<u8> = (0..5000u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
            .collect();
        for (dtype, bytes) in [(DType::F16, &every_f16), (DType::F32, &f32s)] {
            let mut direct = Vec::new();
            assert!(extend_f32(dtype, bytes, &mut direct));
            let mut via = Vec::new();
            assert!(for_each_f64(dtype, bytes, |x| via.push(x as f32)));
            assert_eq!(direct.len(), via.len());
            for (i, (a, b)) in direct.iter().zip(&via).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{dtype} element {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn f32_vec_reads_mapped_views_like_the_map() {
        let values: Vec<f16> = (0..24)
            .map(|i| f16::from_f32(i as f32 * 0.25 - 2.0))
            .collect();
        let mut bytes = vec![0xee; 6];
        bytes.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        let storage = mapped(&bytes, 6..bytes.len());
        let view = |shape: Vec<usize>, strides: Vec<usize>, offset| {
            Tensor::new_view(
                DType::F16,
                shape,
                strides,
                offset,
                storage.clone(),
                "s".into(),
            )
            .unwrap()
        };
        // Contiguous with an offset, and a transposed (gathered) view.
        for t in [
            view(vec![2, 5], vec![5, 1], 3),
            view(vec![4, 3], vec![1, 4], 0),
        ] {
            let want: Vec<f32> = (to_f64_vec(&t).unwrap().unwrap().iter())
                .map(|&x| x as f32)
                .collect();
            assert_eq!(to_f32_vec(&t).unwrap().unwrap(), want);
        }
        assert_eq!(
            to_f32_vec(&view(vec![2], vec![1], 0)).unwrap().unwrap(),
            [-2.0, -1.75]
        );
        let complex = Tensor::new_view(DType::C64, vec![1], vec![1], 0, storage, "s".into());
        assert_eq!(to_f32_vec(&complex.unwrap()).unwrap(), None);
    }

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
