//! Decoding the literals of pickle opcodes: integers of any length, protocol-0 text forms.

use std::sync::Arc;

use crate::checkpoint::value::Value;

use super::error::PickleFault;

type R<T> = Result<T, PickleFault>;

/// Largest LONG4 integer read, in bytes (about 9,900 decimal digits).
pub(super) const MAX_LONG_BYTES: usize = 4096;

pub(super) fn bytes_to_str(b: &[u8]) -> Arc<str> {
    // Protocol 0–2 strings are bytes; torch loads them as UTF-8 with latin-1 as the fallback.
    match std::str::from_utf8(b) {
        Ok(s) => s.into(),
        Err(_) => b.iter().map(|&c| c as char).collect::<String>().into(),
    }
}

pub(super) fn parse_index(line: &str) -> R<u32> {
    line.trim().parse().map_err(|_| PickleFault::BadLiteral {
        what: "memo index",
        text: line.to_string(),
    })
}

pub(super) fn parse_decimal(s: &str) -> R<Value> {
    if let Ok(i) = s.parse::<i64>() {
        return Ok(Value::Int(i));
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PickleFault::BadLiteral {
            what: "integer literal",
            text: s.to_string(),
        });
    }
    Ok(Value::BigInt(s.into()))
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

/// Decodes a protocol-0 STRING argument: a Python bytes repr in single or double quotes.
pub(super) fn unquote_py_string(s: &str) -> R<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() < 2 || b[0] != b[b.len() - 1] || !(b[0] == b'\'' || b[0] == b'"') {
        return Err(PickleFault::Unquoted(s.to_string()));
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
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match inner.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let h = inner
                    .get(i..i + 2)
                    .ok_or(PickleFault::BadEscape("short \\x escape in STRING"))?;
                let bad = || PickleFault::BadEscape("bad \\x escape");
                let h = std::str::from_utf8(h).map_err(|_| bad())?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| bad())?);
                i += 2;
            }
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Decodes Python's raw-unicode-escape (only `\uXXXX` and `\UXXXXXXXX` are escapes).
pub(super) fn raw_unicode_unescape(s: &str) -> R<String> {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() && (chars[i + 1] == 'u' || chars[i + 1] == 'U') {
            let n = if chars[i + 1] == 'u' { 4 } else { 8 };
            let hex: String = chars
                .get(i + 2..i + 2 + n)
                .ok_or(PickleFault::BadEscape("short unicode escape"))?
                .iter()
                .collect();
            let cp = u32::from_str_radix(&hex, 16)
                .map_err(|_| PickleFault::BadEscape("bad unicode escape"))?;
            out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
            i += 2 + n;
        } else {
            out.push(chars[i]);
            i += 1;
        }
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
        assert_eq!(unquote_py_string(r"'a\n\x41\'b'").unwrap(), b"a\nA'b");
        assert_eq!(raw_unicode_unescape(r"caf\u00e9").unwrap(), "café");
    }
}
