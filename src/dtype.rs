//! Element types of torch and safetensors tensors: one table of names, sizes and codes, read by
//! every reader and writer.

use std::fmt;

/// Element types that torch and safetensors files can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary64.
    F64,
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// float8 e4m3 (finite, no infinities).
    F8E4M3,
    /// float8 e5m2.
    F8E5M2,
    /// Signed integers.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 64-bit integer.
    U64,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 8-bit integer.
    U8,
    /// One byte, 0 or 1.
    Bool,
    /// Complex of two f32.
    C64,
    /// Complex of two f64.
    C128,
}

/// Everything the formats call one dtype, in one row.
struct DTypeRow {
    dtype: DType,
    size: usize,
    /// A floating-point type (EMA applies to these only).
    float: bool,
    /// Short lowercase name used in reports.
    name: &'static str,
    /// torch's storage class without `Storage` (`Float`), for the classes torch pickles.
    storage: Option<&'static str>,
    /// Other names torch reads as this dtype: `torch.<dtype>` globals, their aliases, storage
    /// classes fuse-ema reads but does not write.
    torch_names: &'static [&'static str],
    /// numpy's little-endian type code (`f4`), for pickled numpy arrays and scalars.
    numpy: Option<&'static str>,
    /// The safetensors tag.
    safetensors: Option<safetensors::Dtype>,
}

use safetensors::Dtype as S;

/// The one table of dtypes, in the order of [`DType`]'s variants (a unit test checks it).
const DTYPES: [DTypeRow; 17] = [
    DTypeRow {
        dtype: DType::F64,
        size: 8,
        float: true,
        name: "f64",
        storage: Some("Double"),
        torch_names: &["float64", "double"],
        numpy: Some("f8"),
        safetensors: Some(S::F64),
    },
    DTypeRow {
        dtype: DType::F32,
        size: 4,
        float: true,
        name: "f32",
        storage: Some("Float"),
        torch_names: &["float32", "float"],
        numpy: Some("f4"),
        safetensors: Some(S::F32),
    },
    DTypeRow {
        dtype: DType::F16,
        size: 2,
        float: true,
        name: "f16",
        storage: Some("Half"),
        torch_names: &["float16", "half"],
        numpy: Some("f2"),
        safetensors: Some(S::F16),
    },
    DTypeRow {
        dtype: DType::BF16,
        size: 2,
        float: true,
        name: "bf16",
        storage: Some("BFloat16"),
        torch_names: &["bfloat16"],
        numpy: None,
        safetensors: Some(S::BF16),
    },
    DTypeRow {
        dtype: DType::F8E4M3,
        size: 1,
        float: true,
        name: "f8e4m3",
        storage: None,
        torch_names: &["Float8_e4m3fn", "float8_e4m3fn"],
        numpy: None,
        safetensors: Some(S::F8_E4M3),
    },
    DTypeRow {
        dtype: DType::F8E5M2,
        size: 1,
        float: true,
        name: "f8e5m2",
        storage: None,
        torch_names: &["Float8_e5m2", "float8_e5m2"],
        numpy: None,
        safetensors: Some(S::F8_E5M2),
    },
    DTypeRow {
        dtype: DType::I64,
        size: 8,
        float: false,
        name: "i64",
        storage: Some("Long"),
        torch_names: &["int64", "long"],
        numpy: Some("i8"),
        safetensors: Some(S::I64),
    },
    DTypeRow {
        dtype: DType::I32,
        size: 4,
        float: false,
        name: "i32",
        storage: Some("Int"),
        torch_names: &["int32", "int"],
        numpy: Some("i4"),
        safetensors: Some(S::I32),
    },
    DTypeRow {
        dtype: DType::I16,
        size: 2,
        float: false,
        name: "i16",
        storage: Some("Short"),
        torch_names: &["int16", "short"],
        numpy: Some("i2"),
        safetensors: Some(S::I16),
    },
    DTypeRow {
        dtype: DType::I8,
        size: 1,
        float: false,
        name: "i8",
        storage: Some("Char"),
        torch_names: &["int8"],
        numpy: Some("i1"),
        safetensors: Some(S::I8),
    },
    DTypeRow {
        dtype: DType::U64,
        size: 8,
        float: false,
        name: "u64",
        storage: None,
        torch_names: &["UInt64", "uint64"],
        numpy: Some("u8"),
        safetensors: Some(S::U64),
    },
    DTypeRow {
        dtype: DType::U32,
        size: 4,
        float: false,
        name: "u32",
        storage: None,
        torch_names: &["UInt32", "uint32"],
        numpy: Some("u4"),
        safetensors: Some(S::U32),
    },
    DTypeRow {
        dtype: DType::U16,
        size: 2,
        float: false,
        name: "u16",
        storage: None,
        torch_names: &["UInt16", "uint16"],
        numpy: Some("u2"),
        safetensors: Some(S::U16),
    },
    DTypeRow {
        dtype: DType::U8,
        size: 1,
        float: false,
        name: "u8",
        storage: Some("Byte"),
        torch_names: &["uint8", "Untyped"],
        numpy: Some("u1"),
        safetensors: Some(S::U8),
    },
    DTypeRow {
        dtype: DType::Bool,
        size: 1,
        float: false,
        name: "bool",
        storage: Some("Bool"),
        torch_names: &["bool"],
        numpy: Some("b1"),
        safetensors: Some(S::BOOL),
    },
    DTypeRow {
        dtype: DType::C64,
        size: 8,
        float: false,
        name: "c64",
        storage: Some("ComplexFloat"),
        torch_names: &["complex64", "cfloat"],
        numpy: None,
        safetensors: Some(S::C64),
    },
    DTypeRow {
        dtype: DType::C128,
        size: 16,
        float: false,
        name: "c128",
        storage: Some("ComplexDouble"),
        torch_names: &["complex128", "cdouble"],
        numpy: None,
        safetensors: None,
    },
];

impl DType {
    fn row(self) -> &'static DTypeRow {
        &DTYPES[self as usize]
    }

    fn find(pred: impl Fn(&DTypeRow) -> bool) -> Option<DType> {
        DTYPES.iter().find(|r| pred(r)).map(|r| r.dtype)
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        self.row().size
    }

    /// Whether the type is a floating-point type (EMA applies to these only).
    pub fn is_float(self) -> bool {
        self.row().float
    }

    /// Short lowercase name used in reports (`f16`, `i64`, …).
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// The dtype of a pickled torch storage class (`FloatStorage`, `BFloat16Storage`, …) or of a
    /// `torch.<dtype>` global (`float32`, `bfloat16`, …).
    pub fn from_torch_name(name: &str) -> Option<DType> {
        let base = name.strip_suffix("Storage").unwrap_or(name);
        DType::find(|r| r.storage == Some(base) || r.torch_names.contains(&base))
    }

    /// torch's storage class for this dtype (`FloatStorage`), where torch pickles one.
    pub fn storage_class(self) -> Option<String> {
        self.row().storage.map(|s| format!("{s}Storage"))
    }

    /// The dtype of a little-endian numpy type code (`f4`, `i8`, `b1`).
    pub fn from_numpy_code(code: &str) -> Option<DType> {
        DType::find(|r| r.numpy == Some(code))
    }

    /// The dtype of a safetensors dtype tag (`F32`, `BF16`, …).
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        DType::find(|r| r.safetensors == Some(d))
    }

    /// The safetensors dtype tag of this dtype (`None` for complex128, which safetensors lacks).
    pub fn to_safetensors(self) -> Option<safetensors::Dtype> {
        self.row().safetensors
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dtype_table_is_in_variant_order_and_reads_back_what_it_writes() {
        for (i, r) in super::DTYPES.iter().enumerate() {
            assert_eq!(r.dtype as usize, i, "{}", r.name);
            for n in r.torch_names {
                assert_eq!(super::DType::from_torch_name(n), Some(r.dtype), "{n}");
            }
            if let Some(c) = r.dtype.storage_class() {
                assert_eq!(super::DType::from_torch_name(&c), Some(r.dtype), "{c}");
            }
            if let Some(st) = r.dtype.to_safetensors() {
                assert_eq!(super::DType::from_safetensors(st), Some(r.dtype));
            }
        }
    }
}
