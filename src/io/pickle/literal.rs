//! Decoding the literals of pickle opcodes: integers of any length, protocol-0 text forms.

use std::sync::Arc;

use crate::checkpoint::value::Value;

use super::error::PickleFault;

type R<T> = Result<T, PickleFault>;

/// Largest LONG4 integer read, in bytes (about 9,900 decimal digits).
pub(super) const MAX_LONG_BYTES: usize = 4096;

/// Decodes the bytes of a protocol 0–2 string (STRING, BINSTRING, SHORT_BINSTRING): torch.load
/// passes `encoding='utf-8'` (strict), so text that is not UTF-8 fails there and is refused here.
pub(super) fn bytes_to_str(b: &[u8]) -> R<Arc<str>> {
    std::str::from_utf8(b)
        .map(Arc::from)
        .map_err(|_| PickleFault::NotUtf8("a protocol 0-2 string"))
}

/// A GET/PUT memo index: decimal digits only. CPython reads it with `int(text, 10)`, which also
/// takes blanks, a sign and `_` between digits; pickle writes none of them, so they are refused
/// rather than matched (Rust's and Python's ideas of a blank differ).
pub(super) fn parse_index(line: &str) -> R<u32> {
    let digits = !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| line.parse().ok())
        .flatten()
        .ok_or_else(|| PickleFault::BadLiteral {
            what: "memo index",
            text: line.to_string(),
        })
}

/// Protocol-0 FLOAT text. CPython's C unpickler reads it with `PyOS_string_to_double`: no blanks,
/// an overflow (`1e999`) is an error, `inf`/`infinity`/`nan` with a sign are taken; its Python
/// unpickler with `float()`, which also takes blanks and `_`. Only digits, signs, `.`, `e` and
/// the inf/nan words are read (Rust's parser reads those alike); an overflow is refused.
pub(super) fn parse_float(line: &str) -> R<f64> {
    let bad = || PickleFault::BadLiteral {
        what: "FLOAT literal",
        text: line.to_string(),
    };
    let word = line
        .strip_prefix(['+', '-'])
        .unwrap_or(line)
        .to_ascii_lowercase();
    let special = matches!(word.as_str(), "inf" | "infinity" | "nan");
    let plain = (line.bytes()).all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if !special && !plain {
        return Err(bad());
    }
    let f: f64 = line.parse().map_err(|_| bad())?;
    if f.is_infinite() && !special {
        return Err(bad());
    }
    Ok(f)
}

/// Protocol-0 INT text (the line without its newline). CPython's C unpickler reads it with
/// `strtol(base 0)` first (a leading zero is octal, `010` is 8; blanks, signs and `0x` are taken)
/// and its Python unpickler with `int(text, 0)` (`010` is an error): only the spellings both read
/// alike are accepted, `00`/`01` (protocol 0's bools) and canonical decimal.
pub(super) fn parse_int(line: &str) -> R<Value> {
    match line {
        "00" => Ok(Value::Bool(false)),
        "01" => Ok(Value::Bool(true)),
        s => canonical_decimal(s).ok_or_else(|| PickleFault::BadLiteral {
            what: "INT literal (CPython reads INT with strtol base 0: only canonical decimal means the same to every reader)",
            text: s.to_string(),
        }),
    }
}

/// Protocol-0 LONG text: one trailing `L` dropped, then `int(text, 0)` in CPython (a leading zero
/// is an error there); only canonical decimal is accepted.
pub(super) fn parse_long(line: &str) -> R<Value> {
    let s = line.strip_suffix('L').unwrap_or(line);
    canonical_decimal(s).ok_or_else(|| PickleFault::BadLiteral {
        what: "LONG literal (only canonical decimal means the same to every reader)",
        text: line.to_string(),
    })
}

/// `0` or `-?[1-9][0-9]*`: the text every integer reader takes for the same number.
fn canonical_decimal(s: &str) -> Option<Value> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = match digits.as_bytes() {
        [] => false,
        [b'0'] => digits.len() == s.len(),
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    Some(match s.parse::<i64>() {
        Ok(i) => Value::Int(i),
        Err(_) => Value::BigInt(s.into()),
    })
}

/// Integers longer than this many bytes (about 150 decimal digits) are written in hexadecimal:
/// decimal conversion costs time quadratic in the length, and a file of many long integers would
/// otherwise take minutes to open. No checkpoint stores integers that long.
const MAX_DECIMAL_BYTES: usize = 64;

/// Decodes a little-endian two's-complement integer of any length: decimal text up to
/// [`MAX_DECIMAL_BYTES`], `0x…` (with a sign) beyond, so the work is linear in the length.
pub(super) fn long_from_le(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..b.len()].copy_from_slice(b);
        return Value::Int(i64::from_le_bytes(a));
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    // A long spelling of a small number (`5` padded to 9 bytes) is the same int to Python: read
    // it as one, or it would be a different dict key from the short spelling.
    let fill = if neg { 0xff } else { 0 };
    if b[8..].iter().all(|&x| x == fill) && (b[7] & 0x80 != 0) == neg {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        return Value::Int(i64::from_le_bytes(a));
    }
    // Magnitude, big-endian, in base 256.
    let mut mag: Vec<u8> = b.iter().rev().copied().collect();
    if neg {
        for x in mag.iter_mut() {
            *x = !*x;
        }
        for x in mag.iter_mut().rev() {
            let (v, carry) = x.overflowing_add(1);
            *x = v;
            if !carry {
                break;
            }
        }
    }
    let sign = if neg { "-" } else { "" };
    if mag.len() > MAX_DECIMAL_BYTES {
        let skip = mag.iter().take_while(|&&x| x == 0).count();
        let hex: String = mag[skip..].iter().map(|x| format!("{x:02x}")).collect();
        let hex = hex.trim_start_matches('0');
        return Value::BigInt(format!("{sign}0x{}", if hex.is_empty() { "0" } else { hex }).into());
    }
    let mut digits = Vec::new();
    while mag.iter().any(|&x| x != 0) {
        let mut rem = 0u32;
        for x in mag.iter_mut() {
            let cur = (rem << 8) | *x as u32;
            *x = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    Value::BigInt(
        format!(
            "{sign}{}",
            String::from_utf8_lossy(&digits)
                .chars()
                .rev()
                .collect::<String>()
        )
        .into(),
    )
}

/// Decodes a protocol-0 STRING argument (the line without its newline): a Python bytes repr in
/// single or double quotes, decoded as CPython's `escape_decode` does. An escape it does not know
/// keeps its backslash there but warns (an error under `-W error`), and an octal escape above
/// `\377` is cut to 8 bits with a warning: both are refused, as readers could disagree.
pub(super) fn unquote_py_string(b: &[u8]) -> R<Vec<u8>> {
    if b.len() < 2 || b[0] != b[b.len() - 1] || !(b[0] == b'\'' || b[0] == b'"') {
        return Err(PickleFault::Unquoted(
            String::from_utf8_lossy(b).into_owned(),
        ));
    }
    let inner = &b[1..b.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *inner
            .get(i)
            .ok_or(PickleFault::BadEscape("dangling backslash in STRING"))?;
        i += 1;
        match e {
            b'\\' | b'\'' | b'"' => out.push(e),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match inner.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                let v = u8::try_from(v).map_err(|_| {
                    PickleFault::BadEscape("an octal escape above \\377 in STRING (CPython cuts it to 8 bits and warns)")
                })?;
                out.push(v);
            }
            b'x' => {
                let h = inner
                    .get(i..i + 2)
                    .and_then(|h| Some(hex_digit(h[0])? * 16 + hex_digit(h[1])?))
                    .ok_or(PickleFault::BadEscape(
                        "a \\x escape without two hex digits in STRING",
                    ))?;
                out.push(h as u8);
                i += 2;
            }
            _ => {
                return Err(PickleFault::BadEscape(
                    "an unknown escape in STRING (CPython keeps its backslash and warns)",
                ));
            }
        }
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Option<u32> {
    char::from(c).to_digit(16)
}

/// Decodes a protocol-0 UNICODE argument as CPython's raw-unicode-escape does: the bytes are
/// latin-1 code points, a backslash followed by anything but `u`/`U` stands with that character
/// (so `\\u0041` is not an escape: the second backslash is taken by the first), and `\uXXXX` /
/// `\UXXXXXXXX` need exactly their hex digits. A lone surrogate (Python keeps it; no Rust string
/// can) is refused: read lossily, two distinct keys would become one.
pub(super) fn raw_unicode_unescape(b: &[u8]) -> R<String> {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        if c != b'\\' || i == b.len() {
            out.push(char::from(c));
            continue;
        }
        let e = b[i];
        i += 1;
        let n = match e {
            b'u' => 4,
            b'U' => 8,
            _ => {
                out.push('\\');
                out.push(char::from(e));
                continue;
            }
        };
        let digits = b
            .get(i..i + n)
            .ok_or(PickleFault::BadEscape("a truncated \\u escape in UNICODE"))?;
        let mut cp: u32 = 0;
        for &d in digits {
            let d = hex_digit(d).ok_or(PickleFault::BadEscape(
                "a \\u escape with a character that is not a hex digit in UNICODE",
            ))?;
            cp = cp.saturating_mul(16).saturating_add(d);
        }
        let ch = char::from_u32(cp).ok_or(PickleFault::BadEscape(
            "a \\u escape of a lone surrogate or beyond U+10FFFF in UNICODE (Python keeps a surrogate no UTF-8 text holds)",
        ))?;
        out.push(ch);
        i += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_decoding_handles_sign_and_size() {
        assert_eq!(long_from_le(&[0xff]), Value::Int(-1));
        assert_eq!(long_from_le(&[0x00, 0x80]), Value::Int(-32768));
        // 2**64 = 0x1_0000_0000_0000_0000
        let v = long_from_le(&[0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(v, Value::BigInt("18446744073709551616".into()));
        let v = long_from_le(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
        assert_eq!(v, Value::BigInt("-18446744073709551616".into()));
        // Review 8 G1: a long spelling of a small number is that number (one dict key with it).
        assert_eq!(long_from_le(&[5, 0, 0, 0, 0, 0, 0, 0, 0]), Value::Int(5));
        let mut minus_two = [0xffu8; 12];
        minus_two[0] = 0xfe;
        assert_eq!(long_from_le(&minus_two), Value::Int(-2));
        let mut top = [0u8; 9];
        top[7] = 0x80; // 2**63: beyond i64
        assert_eq!(
            long_from_le(&top),
            Value::BigInt("9223372036854775808".into())
        );
        let mut low = [0xffu8; 9];
        low[7] = 0x7f; // -(2**63) - 1: beyond i64
        assert_eq!(
            long_from_le(&low),
            Value::BigInt("-9223372036854775809".into())
        );
    }

    #[test]
    fn long_integers_past_the_decimal_limit_are_hexadecimal() {
        // 2**520: byte 65 is 1, the rest zero (plus a zero sign byte).
        let mut b = vec![0u8; 65];
        b.push(1);
        b.push(0);
        let want = format!("0x1{}", "0".repeat(130));
        assert_eq!(long_from_le(&b), Value::BigInt(want.into()));
        let neg: Vec<u8> = b.iter().map(|x| !x).collect(); // -(2**520) - 1
        let want = format!("-0x1{}1", "0".repeat(129));
        assert_eq!(long_from_le(&neg), Value::BigInt(want.into()));
    }

    #[test]
    fn protocol0_string_escapes() {
        let s = |x: &str| unquote_py_string(x.as_bytes());
        assert_eq!(s(r"'a\n\x41\'b'").unwrap(), b"a\nA'b");
        assert_eq!(s(r"'\\\101\0'").unwrap(), b"\\A\0");
        assert_eq!(s(r#""a'b""#).unwrap(), b"a'b");
        // Unknown escapes, \x without two hex digits, octal above \377: refused.
        for bad in [
            r"'e\ma'", r"'\x+f'", r"'\x4'", r"'\555'", r"'a\'", "'ema' ", "'ema", "\"a'",
        ] {
            assert!(s(bad).is_err(), "{bad}");
        }
        assert_eq!(bytes_to_str(b"caf\xc3\xa9").unwrap().as_ref(), "café");
        assert!(bytes_to_str(b"caf\xe9").is_err());
    }

    #[test]
    fn raw_unicode_escape_counts_backslashes() {
        let u = |x: &[u8]| raw_unicode_unescape(x);
        assert_eq!(u(b"caf\\u00e9").unwrap(), "café");
        assert_eq!(u(b"caf\xe9").unwrap(), "café");
        assert_eq!(u(b"a\\\\u0041").unwrap(), "a\\\\u0041");
        assert_eq!(u(b"a\\\\\\u0041").unwrap(), "a\\\\A");
        assert_eq!(u(b"a\\q\\").unwrap(), "a\\q\\");
        assert_eq!(u(b"\\U0001F600").unwrap(), "\u{1F600}");
        for bad in [&b"\\ud800"[..], b"\\u+041", b"\\u004", b"\\U00110000"] {
            assert!(u(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn protocol0_floats_and_memo_indices() {
        assert_eq!(parse_float("0.5").unwrap(), 0.5);
        assert_eq!(parse_float("-1e-3").unwrap(), -1e-3);
        assert_eq!(parse_float("-inf").unwrap(), f64::NEG_INFINITY);
        assert!(parse_float("nan").unwrap().is_nan());
        for bad in [" 1.0", "1.0 ", "1e999", "1_0.5", "0x1p3", "", "1.0\0"] {
            assert!(parse_float(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_index("007").unwrap(), 7);
        for bad in ["", " 7", "+7", "1_0", "-1", "4294967296"] {
            assert!(parse_index(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn protocol0_integers_are_canonical_decimal_or_refused() {
        assert_eq!(parse_int("00").unwrap(), Value::Bool(false));
        assert_eq!(parse_int("01").unwrap(), Value::Bool(true));
        assert_eq!(parse_int("0").unwrap(), Value::Int(0));
        assert_eq!(parse_int("-17").unwrap(), Value::Int(-17));
        assert_eq!(
            parse_int("99999999999999999999").unwrap(),
            Value::BigInt("99999999999999999999".into())
        );
        assert_eq!(parse_long("10L").unwrap(), Value::Int(10));
        assert_eq!(parse_long("-0").ok(), None);
        // CPython: 010 is 8 (INT) or an error (LONG); signs, blanks and prefixes read differently.
        for bad in [
            "010", "-0", "+1", " 1", "1 ", "0x8", "0o7", "1_0", "", "-", "1\0",
        ] {
            assert!(parse_int(bad).is_err(), "INT {bad:?}");
            assert!(parse_long(bad).is_err(), "LONG {bad:?}");
        }
        assert!(parse_long("010L").is_err());
        assert!(parse_long("1LL").is_err());
    }
}
