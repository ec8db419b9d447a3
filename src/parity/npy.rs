//! One NumPy `.npy` array (format versions 1–3). The header is a Python dict literal, parsed
//! here by its grammar rather than searched for substrings, and every size derived from it is
//! computed with checked arithmetic: a hostile golden file gets an error, never a panic or a
//! huge allocation.

use thiserror::Error;

/// Why an `.npy` array was not read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NpyError {
    /// The magic string `\x93NUMPY` is missing.
    #[error("not an .npy array (no \\x93NUMPY magic)")]
    NotNpy,
    /// A format version other than 1, 2 or 3.
    #[error("unsupported .npy format version {0}.{1}")]
    Version(u8, u8),
    /// The file ends inside the preamble or the header.
    #[error("truncated header")]
    TruncatedHeader,
    /// The header is not a dict literal of the expected form.
    #[error("bad header at byte {at}: {problem}")]
    Header {
        /// Offset of the problem inside the header text.
        at: usize,
        /// What was expected.
        problem: String,
    },
    /// A key numpy requires is missing, or one it does not know is present.
    #[error("header keys must be exactly 'descr', 'fortran_order' and 'shape' ({0})")]
    Keys(String),
    /// An element type other than those [`Dtype`] lists.
    #[error("dtype {0} is not read (only '<f4', '|u1', '|b1', '<i4', '<i8')")]
    DType(String),
    /// An integer element beyond what f32 holds exactly (|v| > 2^24).
    #[error("integer element {0} is beyond what f32 holds exactly")]
    Inexact(i64),
    /// Column-major data.
    #[error("Fortran-order arrays are not read")]
    FortranOrder,
    /// The shape's element or byte count does not fit in memory addresses.
    #[error("shape {0:?} overflows")]
    Overflow(Vec<u64>),
    /// The data is shorter or longer than the shape says.
    #[error("shape {shape:?} needs {need} bytes of data, the array holds {have}")]
    DataLength {
        /// The declared shape.
        shape: Vec<usize>,
        /// Bytes the shape needs.
        need: usize,
        /// Bytes present after the header.
        have: usize,
    },
}

/// The element types read: float32 values, and the integer or boolean class maps a semantic
/// segmentation golden holds (widened to f32, which holds every label up to 2^24 exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `<f4`.
    F32,
    /// `|u1`.
    U8,
    /// `|b1` (each byte 0 or 1).
    Bool,
    /// `<i4`.
    I32,
    /// `<i8`.
    I64,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Dtype> {
        Some(match descr {
            "<f4" => Dtype::F32,
            "|u1" => Dtype::U8,
            "|b1" => Dtype::Bool,
            "<i4" => Dtype::I32,
            "<i8" => Dtype::I64,
            _ => return None,
        })
    }

    /// Bytes per element.
    fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::Bool => 1,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::I64 => 8,
        }
    }

    /// The elements of `b` (a whole number of them) as f32.
    fn widen(self, b: &[u8]) -> Result<Vec<f32>, NpyError> {
        let int = |v: i64| {
            if v.unsigned_abs() > 1 << 24 {
                Err(NpyError::Inexact(v))
            } else {
                Ok(v as f32)
            }
        };
        match self {
            Dtype::F32 => Ok(crate::convert::f32s_le(b).collect()),
            Dtype::U8 => Ok(b.iter().map(|&v| f32::from(v)).collect()),
            Dtype::Bool => b
                .iter()
                .map(|&v| match v {
                    0 | 1 => Ok(f32::from(v)),
                    other => Err(NpyError::Inexact(i64::from(other))),
                })
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| int(i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
                .collect(),
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| int(i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
                .collect(),
        }
    }
}

/// A parsed little-endian C-order array, its elements as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Npy {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Vec<f32>,
    /// The element type stored in the file.
    pub dtype: Dtype,
}

/// Parses one `.npy` file's bytes.
pub fn parse(b: &[u8]) -> Result<Npy, NpyError> {
    if b.get(..6) != Some(b"\x93NUMPY") {
        return Err(NpyError::NotNpy);
    }
    let (major, minor) = match b.get(6..8) {
        Some(&[major, minor]) => (major, minor),
        _ => return Err(NpyError::TruncatedHeader),
    };
    let (hlen, start): (usize, usize) = match major {
        1 => (le_u16(b.get(8..10))? as usize, 10),
        2 | 3 => (le_u32(b.get(8..12))? as usize, 12),
        _ => return Err(NpyError::Version(major, minor)),
    };
    let end = start.checked_add(hlen).ok_or(NpyError::TruncatedHeader)?;
    let text = b.get(start..end).ok_or(NpyError::TruncatedHeader)?;
    let text = std::str::from_utf8(text).map_err(|e| NpyError::Header {
        at: e.valid_up_to(),
        problem: "not UTF-8 text".into(),
    })?;
    let header = Parser { s: text, at: 0 }.header()?;
    let (dtype, shape) = header.dtype_and_shape()?;
    let need = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::Overflow(shape.iter().map(|&d| d as u64).collect()))?;
    let data = &b[end..];
    if data.len() != need {
        return Err(NpyError::DataLength {
            shape,
            need,
            have: data.len(),
        });
    }
    Ok(Npy {
        shape,
        data: dtype.widen(data)?,
        dtype,
    })
}

fn le_u16(b: Option<&[u8]>) -> Result<u16, NpyError> {
    match b {
        Some(&[x, y]) => Ok(u16::from_le_bytes([x, y])),
        _ => Err(NpyError::TruncatedHeader),
    }
}

fn le_u32(b: Option<&[u8]>) -> Result<u32, NpyError> {
    match b {
        Some(&[a, b2, c, d]) => Ok(u32::from_le_bytes([a, b2, c, d])),
        _ => Err(NpyError::TruncatedHeader),
    }
}

/// A value of the header's literal grammar.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<Lit>),
    /// A list; its items are parsed but not kept (only a structured dtype has one).
    List,
}

/// The three entries numpy writes and requires.
struct Header {
    descr: Lit,
    fortran_order: Lit,
    shape: Lit,
}

impl Header {
    /// Checks dtype and order, and returns the dtype and the shape.
    fn dtype_and_shape(self) -> Result<(Dtype, Vec<usize>), NpyError> {
        let dtype = match self.descr {
            Lit::Str(s) => Dtype::parse(&s).ok_or(NpyError::DType(format!("'{s}'")))?,
            other => return Err(NpyError::DType(format!("{other:?} (a structured dtype)"))),
        };
        match self.fortran_order {
            Lit::Bool(false) => {}
            Lit::Bool(true) => return Err(NpyError::FortranOrder),
            other => {
                return Err(NpyError::Header {
                    at: 0,
                    problem: format!("'fortran_order' is {other:?}, not True or False"),
                });
            }
        }
        let Lit::Tuple(dims) = self.shape else {
            return Err(NpyError::Header {
                at: 0,
                problem: format!("'shape' is {:?}, not a tuple", self.shape),
            });
        };
        let dims: Vec<u64> = dims
            .into_iter()
            .map(|d| match d {
                Lit::Int(n) => Ok(n),
                other => Err(NpyError::Header {
                    at: 0,
                    problem: format!("shape dimension {other:?} is not an integer"),
                }),
            })
            .collect::<Result<_, _>>()?;
        let shape = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| NpyError::Overflow(dims.clone())))
            .collect::<Result<_, _>>()?;
        Ok((dtype, shape))
    }
}

/// Recursive descent over the header text.
struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, problem: impl Into<String>) -> Result<T, NpyError> {
        Err(NpyError::Header {
            at: self.at,
            problem: problem.into(),
        })
    }

    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start_matches([' ', '\t', '\n', '\r']).len();
    }

    /// Consumes `c` (after spaces) when it is next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        if self.rest().starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// `{ key: value, ... }` with an optional trailing comma, then only whitespace.
    fn header(mut self) -> Result<Header, NpyError> {
        if !self.eat('{') {
            return self.err("expected '{'");
        }
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        while !self.eat('}') {
            let key_at = self.at;
            let Lit::Str(key) = self.value(0)? else {
                return self.err("expected a string key");
            };
            if !self.eat(':') {
                return self.err("expected ':'");
            }
            let value = self.value(0)?;
            let slot = match key.as_str() {
                "descr" => &mut descr,
                "fortran_order" => &mut fortran_order,
                "shape" => &mut shape,
                other => return Err(NpyError::Keys(format!("unknown key '{other}'"))),
            };
            if slot.replace(value).is_some() {
                self.at = key_at;
                return self.err(format!("key '{key}' repeated"));
            }
            if !self.eat(',') {
                if self.eat('}') {
                    break;
                }
                return self.err("expected ',' or '}'");
            }
        }
        self.skip_space();
        if self.at != self.s.len() {
            return self.err("text after the dict");
        }
        let missing = |name: &str| NpyError::Keys(format!("'{name}' missing"));
        Ok(Header {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }

    /// One literal: a quoted string, True/False, a non-negative integer, a tuple or a list.
    /// `depth` bounds nesting (a structured dtype's list of tuples needs two levels).
    fn value(&mut self, depth: usize) -> Result<Lit, NpyError> {
        if depth > 8 {
            return self.err("nested too deeply");
        }
        self.skip_space();
        let rest = self.rest();
        let Some(c) = rest.chars().next() else {
            return self.err("unexpected end");
        };
        match c {
            '\'' | '"' => {
                // numpy's own keys and dtype strings never hold escapes; refusing them keeps
                // one reading of the text.
                let Some(len) = rest[1..].find(c) else {
                    return self.err("unterminated string");
                };
                let body = &rest[1..1 + len];
                if body.contains('\\') {
                    return self.err("escape sequences are not read");
                }
                self.at += len + 2;
                Ok(Lit::Str(body.to_string()))
            }
            '(' | '[' => {
                self.at += 1;
                let close = if c == '(' { ')' } else { ']' };
                let mut items = Vec::new();
                let mut trailing_comma = false;
                while !self.eat(close) {
                    items.push(self.value(depth + 1)?);
                    trailing_comma = self.eat(',');
                    if !trailing_comma {
                        if self.eat(close) {
                            break;
                        }
                        return self.err(format!("expected ',' or '{close}'"));
                    }
                }
                // `(3)` is the integer 3 in Python, not a tuple.
                if c == '(' && items.len() == 1 && !trailing_comma {
                    return Ok(items.pop().expect("one item"));
                }
                Ok(if c == '(' {
                    Lit::Tuple(items)
                } else {
                    Lit::List
                })
            }
            '0'..='9' => {
                let digits =
                    rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let n = rest[..digits]
                    .parse::<u64>()
                    .or_else(|_| self.err(format!("integer {} too large", &rest[..digits])))?;
                self.at += digits;
                // Python 2 wrote long integers with an `L` suffix.
                if self.rest().starts_with('L') {
                    self.at += 1;
                }
                Ok(Lit::Int(n))
            }
            _ if rest.starts_with("True") => {
                self.at += 4;
                Ok(Lit::Bool(true))
            }
            _ if rest.starts_with("False") => {
                self.at += 5;
                Ok(Lit::Bool(false))
            }
            _ => self.err(format!("unexpected '{c}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = b"\x93NUMPY".to_vec();
        b.extend_from_slice(&[version, 0]);
        if version == 1 {
            b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_what_numpy_writes() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n";
        let data = floats(&[0.0, 1.0, 2.0, 3.0, 4.5, -5.0]);
        for v in [1, 2, 3] {
            let a = parse(&npy(v, h, &data)).unwrap();
            assert_eq!(a.shape, [2, 3]);
            assert_eq!(a.data, [0.0, 1.0, 2.0, 3.0, 4.5, -5.0]);
        }
        // One-dimensional and scalar shapes, keys in another order, double quotes.
        let a = parse(&npy(
            1,
            "{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<f4\"}",
            &floats(&[1.0, 2.0]),
        ))
        .unwrap();
        assert_eq!(a.shape, [2]);
        let a = parse(&npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': ()}",
            &floats(&[7.0]),
        ))
        .unwrap();
        assert!(a.shape.is_empty());
        assert_eq!(a.data, [7.0]);
    }

    #[test]
    fn reads_class_maps_as_exact_labels() {
        let h = |d: &str| format!("{{'descr': '{d}', 'fortran_order': False, 'shape': (3,)}}");
        let a = parse(&npy(1, &h("|u1"), &[0, 7, 255])).unwrap();
        assert_eq!((a.dtype, a.data), (Dtype::U8, vec![0.0, 7.0, 255.0]));
        let a = parse(&npy(1, &h("|b1"), &[0, 1, 1])).unwrap();
        assert_eq!((a.dtype, a.data), (Dtype::Bool, vec![0.0, 1.0, 1.0]));
        let ints: Vec<u8> = [3i32, -1, 1 << 24]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse(&npy(1, &h("<i4"), &ints)).unwrap().data,
            [3.0, -1.0, 16777216.0]
        );
        let longs: Vec<u8> = [5i64, 0, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(parse(&npy(1, &h("<i8"), &longs)).unwrap().dtype, Dtype::I64);
        // A byte count for another dtype, a label f32 would round, a boolean that is not 0/1.
        assert!(matches!(
            parse(&npy(1, &h("<i4"), &[0, 1, 2])).unwrap_err(),
            NpyError::DataLength { need: 12, .. }
        ));
        let big: Vec<u8> = [1i32 + (1 << 24), 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse(&npy(1, &h("<i4"), &big)).unwrap_err(),
            NpyError::Inexact(16777217)
        );
        assert_eq!(
            parse(&npy(1, &h("|b1"), &[0, 2, 1])).unwrap_err(),
            NpyError::Inexact(2)
        );
        assert!(matches!(
            parse(&npy(1, &h("<u2"), &[0; 6])).unwrap_err(),
            NpyError::DType(_)
        ));
    }

    #[test]
    fn hostile_headers_get_clear_errors() {
        let one = floats(&[1.0]);
        let case = |h: &str| parse(&npy(1, h, &one)).unwrap_err();
        let ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}";
        assert!(parse(&npy(1, ok, &one)).is_ok());
        assert_eq!(
            case("{'descr': '<f4', 'fortran_order': True, 'shape': (1,)}"),
            NpyError::FortranOrder
        );
        assert_eq!(
            case("{'descr': '>f4', 'fortran_order': False, 'shape': (1,)}"),
            NpyError::DType("'>f4'".into())
        );
        assert!(matches!(
            case("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}"),
            NpyError::DType(_)
        ));
        // Substring matching would have accepted these.
        assert!(matches!(
            case(
                "{'descr': '<f8', 'x': \"'descr': '<f4'\", 'fortran_order': False, 'shape': (1,)}"
            ),
            NpyError::DType(_) | NpyError::Keys(_)
        ));
        assert!(matches!(
            case("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}"),
            NpyError::Header { .. }
        ));
        assert!(matches!(
            case("{'descr': '<f4', 'shape': (1,)}"),
            NpyError::Keys(_)
        ));
        assert!(matches!(case("{'descr': '<f4', "), NpyError::Header { .. }));
        assert!(matches!(
            case("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} trailing"),
            NpyError::Header { .. }
        ));
        assert!(matches!(
            case("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
            NpyError::Header { .. }
        ));
        assert!(matches!(
            case("{'descr': '<f4', 'fortran_order': False, 'shape': [1]}"),
            NpyError::Header { .. }
        ));
        assert!(matches!(
            case(
                "{'descr': '<f4', 'fortran_order': False, 'shape': ((((((((((1,),),),),),),),),),),)}"
            ),
            NpyError::Header { .. }
        ));
    }

    #[test]
    fn overflowing_shape_is_an_error_not_a_panic() {
        let h = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, 4)}}",
            u64::MAX / 2,
            u64::MAX / 2
        );
        assert!(matches!(
            parse(&npy(1, &h, &[])).unwrap_err(),
            NpyError::Overflow(_)
        ));
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}";
        assert!(matches!(
            parse(&npy(1, h, &[])).unwrap_err(),
            NpyError::Header { .. }
        ));
    }

    #[test]
    fn truncated_or_padded_data_is_an_error() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}";
        let e = parse(&npy(1, h, &floats(&[1.0, 2.0, 3.0]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "shape [2, 2] needs 16 bytes of data, the array holds 12"
        );
        assert!(parse(&npy(1, h, &floats(&[0.0; 5]))).is_err());
        assert_eq!(parse(b"\x93NUMPY\x01"), Err(NpyError::TruncatedHeader));
        let mut short = npy(1, h, &[]);
        short.truncate(20);
        assert_eq!(parse(&short), Err(NpyError::TruncatedHeader));
        assert_eq!(parse(b"PK\x03\x04 not npy"), Err(NpyError::NotNpy));
        assert_eq!(parse(&npy(4, h, &[])), Err(NpyError::Version(4, 0)));
    }
}
