//! The local side of the archive: each entry's local header must repeat what the directory says,
//! and the entries (with their data descriptors) must tile the file from byte 0 to the directory,
//! so that readers walking local headers front to back see exactly what miniz sees.

use super::*;

/// Reads the entry's local header: it must repeat the directory's name, method and sizes, and
/// its data must lie inside the file. Sets `data_start`.
pub(super) fn local_header(file: &[u8], e: &mut ZipEntry) -> Result<(), ZipDirError> {
    let shown = e.display();
    let h = slice(file, e.local_offset, LFH_LEN)
        .filter(|h| &h[..4] == LFH_SIG)
        .ok_or_else(|| {
            Broken(format!(
                "{shown}: no local header at offset {}",
                e.local_offset
            ))
        })?;
    let flags = le16(h, 6);
    let method = le16(h, 8);
    let (c32, u32_) = (le32(h, 18), le32(h, 22));
    let (nlen, elen) = (usize::from(le16(h, 26)), usize::from(le16(h, 28)));
    let start = e.local_offset + LFH_LEN as u64;
    let rest = slice(file, start, nlen + elen).ok_or_else(|| {
        Broken(format!(
            "{shown}: the local header runs past the end of the file"
        ))
    })?;
    if rest[..nlen] != e.name[..] {
        return Err(Ambiguous(format!(
            "the local header at offset {} names {:?} but the central directory names {shown:?}",
            e.local_offset,
            String::from_utf8_lossy(&rest[..nlen])
        )));
    }
    if method != e.method {
        return Err(Ambiguous(format!(
            "{shown}: the local header says compression method {method}, the central directory \
             {}",
            e.method
        )));
    }
    let extra = &rest[nlen..];
    let z64 = zip64_field(extra, &shown)?;
    let (mut csize, mut size) = (u64::from(c32), u64::from(u32_));
    if let Some(mut d) = z64 {
        // The zip64 field holds the sizes whose 32-bit fields carry the marker, in this order.
        if u32_ == u32::MAX {
            size = take64(&mut d, &shown)?;
        }
        if c32 == u32::MAX {
            csize = take64(&mut d, &shown)?;
        }
    }
    let deferred = flags & DATA_DESCRIPTOR_FLAG != 0 && csize == 0 && size == 0;
    if !deferred && (csize != e.compressed_size || size != e.size) {
        return Err(Ambiguous(format!(
            "{shown}: the local header declares {csize} bytes ({size} uncompressed), the central \
             directory {} ({})",
            e.compressed_size, e.size
        )));
    }
    e.data_start = start + (nlen + elen) as u64;
    if e.data_start
        .checked_add(e.compressed_size)
        .is_none_or(|v| v > file.len() as u64)
    {
        return Err(Broken(format!(
            "{shown}: data at offset {} of {} bytes runs past the end of the file ({} bytes)",
            e.data_start,
            e.compressed_size,
            file.len()
        )));
    }
    Ok(())
}

/// The length of a data descriptor after an entry's data, if one of its four encodings (with
/// or without signature, 32- or 64-bit sizes) repeats the entry's sizes.
fn descriptor_len(file: &[u8], e: &ZipEntry, at: u64) -> Option<u64> {
    for sig in [true, false] {
        for wide in [false, true] {
            let head = if sig { 4 } else { 0 };
            let w = if wide { 8 } else { 4 };
            let len = head + 4 + 2 * w;
            let Some(d) = slice(file, at, len) else {
                continue;
            };
            if sig && &d[..4] != b"PK\x07\x08" {
                continue;
            }
            let read = |o: usize| {
                if wide {
                    le64(d, o)
                } else {
                    u64::from(le32(d, o))
                }
            };
            if read(head + 4) == e.compressed_size && read(head + 4 + w) == e.size {
                return Some(len as u64);
            }
        }
    }
    None
}

/// Every byte before the directory belongs to exactly one entry: the first local header at
/// byte 0 (where torch's zip test looks), no gaps where a second archive or a hidden header could
/// sit, no two entries sharing bytes.
pub(super) fn check_tiling(
    file: &[u8],
    entries: &[ZipEntry],
    cd_offset: u64,
) -> Result<(), ZipDirError> {
    let mut order: Vec<&ZipEntry> = entries.iter().collect();
    order.sort_by_key(|e| e.local_offset);
    let mut cursor = 0u64;
    for e in order {
        if e.local_offset < cursor {
            return Err(Ambiguous(format!(
                "{} (local header at offset {}) overlaps the entry before it, which ends at \
                 offset {cursor}",
                e.display(),
                e.local_offset
            )));
        }
        if e.local_offset > cursor {
            return Err(Ambiguous(format!(
                "{} bytes at offset {cursor} belong to no entry (a hidden archive or header \
                 could sit there)",
                e.local_offset - cursor
            )));
        }
        cursor = e.data_start + e.compressed_size;
        if e.flags & DATA_DESCRIPTOR_FLAG != 0
            && cursor < cd_offset
            && let Some(n) = descriptor_len(file, e, cursor)
        {
            cursor += n;
        }
    }
    if cursor != cd_offset {
        return Err(Ambiguous(if cursor < cd_offset {
            format!(
                "{} bytes at offset {cursor} between the last entry and the central directory \
                 belong to no entry",
                cd_offset - cursor
            )
        } else {
            format!("the last entry runs into the central directory at offset {cd_offset}")
        }));
    }
    Ok(())
}
