//! The zip directory, read the way torch's own reader reads it — miniz, driven by
//! `caffe2/serialize/inline_container.cc` — and refused wherever another zip reader could read the
//! same bytes differently.
//!
//! miniz takes the last end-of-central-directory signature in the file's last 64 KiB, follows a
//! zip64 locator right in front of it, reads the directory at the absolute offset the end record
//! gives (no correction for data prepended to the archive), and looks names up case-insensitively
//! (ASCII only). It checks only the signature of a local header; the data starts after the local
//! header's own name and extra field. Other readers (the `zip` crate, Python's `zipfile`, scanners
//! that walk local headers front to back) correct offsets, trust local headers or search for
//! other records. So this reader accepts only archives where all of them must agree: one end
//! record whose comment reaches the end of the file, zip64 records that agree with it, one
//! directory right in front of them, local headers that repeat the directory's name, method and
//! sizes, and entries that tile the file from byte 0 to the directory without gaps or overlaps.
//! Names that collide case-insensitively are refused: miniz's binary search would find either.

use std::collections::HashMap;

mod local;

use local::{check_tiling, local_header};

/// Why an archive cannot be read as torch would read it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZipDirError {
    /// Two readers could disagree about what the archive holds.
    #[error("{0}")]
    Ambiguous(String),
    /// The archive is damaged (torch's reader fails too).
    #[error("{0}")]
    Broken(String),
    /// A zip feature torch's reader does not support (encryption, other compression methods).
    #[error("{0}")]
    Unsupported(String),
}

use ZipDirError::{Ambiguous, Broken, Unsupported};

/// One file of the archive, as its directory record and local header describe it.
#[derive(Clone, Debug)]
pub(crate) struct ZipEntry {
    /// The name's bytes as stored.
    pub name: Vec<u8>,
    /// 0 stored, 8 deflated.
    pub method: u16,
    /// The general-purpose flags of the directory record.
    pub flags: u16,
    /// Bytes of (possibly compressed) data.
    pub compressed_size: u64,
    /// Bytes once decompressed.
    pub size: u64,
    /// Offset of the local header.
    pub local_offset: u64,
    /// Offset of the first data byte.
    pub data_start: u64,
    /// The CRC-32 the directory records for the data (not checked here; torch does not check
    /// it either). A writer that copies an entry's bytes unchanged carries it over.
    pub crc32: u32,
}

impl ZipEntry {
    /// The name for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// The archive's entries in directory order, with miniz's case-insensitive index.
#[derive(Debug)]
pub(crate) struct ZipDir {
    /// Entries in central-directory order (torch takes the archive name from the first).
    pub entries: Vec<ZipEntry>,
    lower: HashMap<Vec<u8>, usize>,
}

const EOCD_SIG: &[u8] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const LOCATOR_SIG: &[u8] = b"PK\x06\x07";
const LOCATOR_LEN: usize = 20;
const EOCD64_SIG: &[u8] = b"PK\x06\x06";
const EOCD64_LEN: usize = 56;
const CDH_SIG: &[u8] = b"PK\x01\x02";
const CDH_LEN: usize = 46;
const LFH_SIG: &[u8] = b"PK\x03\x04";
const LFH_LEN: usize = 30;
const ZIP64_EXTRA: u16 = 0x0001;
/// Encrypted, compressed patch data, strong encryption: miniz refuses to extract such an entry,
/// other readers may ignore the flag and read it.
pub(crate) const UNREADABLE_FLAGS: u16 = 0x0001 | 0x0020 | 0x0040;
/// A masked local header: miniz refuses the whole archive.
const MASKED_HEADER: u16 = 0x2000;
const DATA_DESCRIPTOR_FLAG: u16 = 0x0008;

fn slice(b: &[u8], at: u64, len: usize) -> Option<&[u8]> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(len)?)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The end record and what it says about the directory.
struct End {
    /// Where the end record (or the zip64 end record, when present) starts: the directory must
    /// end exactly there.
    records_start: u64,
    entries: u64,
    cd_offset: u64,
    cd_size: u64,
}

impl ZipDir {
    /// Reads and cross-checks the whole directory of `file`.
    pub fn parse(file: &[u8]) -> Result<ZipDir, ZipDirError> {
        let end = end_record(file)?;
        if end.cd_offset.checked_add(end.cd_size) != Some(end.records_start) {
            return Err(Ambiguous(format!(
                "the end record places a {}-byte central directory at offset {}, but the end \
                 records start at offset {}: readers that correct offsets and miniz would read \
                 different directories",
                end.cd_size, end.cd_offset, end.records_start
            )));
        }
        let cd = slice(file, end.cd_offset, end.cd_size as usize)
            .ok_or_else(|| Broken("the central directory lies past the end of the file".into()))?;
        let mut entries = Vec::new();
        let mut pos = 0usize;
        while pos < cd.len() {
            if entries.len() as u64 >= end.entries {
                return Err(Ambiguous(format!(
                    "the central directory holds more than the {} entries the end record counts",
                    end.entries
                )));
            }
            let (entry, used) = central_header(&cd[pos..], file.len() as u64)?;
            entries.push(entry);
            pos += used;
        }
        if entries.len() as u64 != end.entries {
            return Err(Ambiguous(format!(
                "the end record counts {} entries but the central directory holds {}",
                end.entries,
                entries.len()
            )));
        }
        for e in &mut entries {
            local_header(file, e)?;
        }
        check_tiling(file, &entries, end.cd_offset)?;
        let mut lower = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            if let Some(j) = lower.insert(e.name.to_ascii_lowercase(), i) {
                let other = &entries[j];
                return Err(Ambiguous(if other.name == e.name {
                    format!("the archive lists {} twice", e.display())
                } else {
                    format!(
                        "{} and {} differ only in case; torch's reader looks names up \
                         case-insensitively and could find either",
                        other.display(),
                        e.display()
                    )
                }));
            }
        }
        Ok(ZipDir { entries, lower })
    }

    /// The entry torch's `mz_zip_reader_locate_file(name, flags 0)` finds: ASCII case-insensitive.
    pub fn find(&self, name: &str) -> Option<&ZipEntry> {
        self.lower
            .get(&name.as_bytes().to_ascii_lowercase())
            .map(|&i| &self.entries[i])
    }
}

/// The entries exactly as miniz reads them, without any of the cross-checks of
/// [`ZipDir::parse`] and skipping what it cannot read. Only for judging the pickles of an archive
/// that is refused anyway, so that the refusal still names what torch would have run.
pub(crate) fn miniz_entries(file: &[u8]) -> Vec<ZipEntry> {
    let mut out = Vec::new();
    let Some(last) = file.len().checked_sub(EOCD_LEN) else {
        return out;
    };
    let lowest = file.len().saturating_sub(EOCD_LEN + usize::from(u16::MAX));
    let Some(pos) = (lowest..=last).rev().find(|&p| &file[p..p + 4] == EOCD_SIG) else {
        return out;
    };
    let r = &file[pos..pos + EOCD_LEN];
    let (mut total, mut cd) = (u64::from(le16(r, 10)), u64::from(le32(r, 16)));
    if let Some(l) = pos.checked_sub(LOCATOR_LEN).map(|l| &file[l..pos])
        && &l[..4] == LOCATOR_SIG
        && let Some(z) = slice(file, le64(l, 8), EOCD64_LEN).filter(|z| &z[..4] == EOCD64_SIG)
    {
        total = le64(z, 32);
        cd = le64(z, 48);
    }
    for _ in 0..total.min(1 << 20) {
        let Some(h) = slice(file, cd, CDH_LEN).filter(|h| &h[..4] == CDH_SIG) else {
            break;
        };
        let (nlen, elen, clen) = (
            usize::from(le16(h, 28)),
            usize::from(le16(h, 30)),
            usize::from(le16(h, 32)),
        );
        let (Some(name), Some(extra)) = (
            slice(file, cd + CDH_LEN as u64, nlen),
            slice(file, cd + (CDH_LEN + nlen) as u64, elen),
        ) else {
            break;
        };
        let (c32, u32_, lofs32) = (le32(h, 20), le32(h, 24), le32(h, 42));
        let (mut csize, mut size, mut lofs) = (u64::from(c32), u64::from(u32_), u64::from(lofs32));
        let z64 = extra_fields(extra)
            .ok()
            .and_then(|f| f.into_iter().find(|(id, _)| *id == ZIP64_EXTRA));
        if let Some((_, mut d)) = z64.filter(|_| c32.max(u32_).max(lofs32) == u32::MAX) {
            let mut next = |v: &mut u64, marked: bool| {
                if marked && let Ok(x) = take64(&mut d, "") {
                    *v = x;
                }
            };
            next(&mut size, u32_ == u32::MAX);
            next(&mut csize, c32 == u32::MAX);
            next(&mut lofs, lofs32 == u32::MAX);
        }
        cd += (CDH_LEN + nlen + elen + clen) as u64;
        let Some(l) = slice(file, lofs, LFH_LEN).filter(|l| &l[..4] == LFH_SIG) else {
            continue;
        };
        let data_start =
            lofs + (LFH_LEN + usize::from(le16(l, 26)) + usize::from(le16(l, 28))) as u64;
        if data_start
            .checked_add(csize)
            .is_some_and(|e| e <= file.len() as u64)
        {
            out.push(ZipEntry {
                name: name.to_vec(),
                method: le16(h, 10),
                flags: le16(h, 8),
                compressed_size: csize,
                size,
                local_offset: lofs,
                data_start,
                crc32: le32(h, 16),
            });
        }
    }
    out
}

/// Finds the end record as miniz does (the last signature with room for a record, in the last
/// 64 KiB), then demands that its comment end exactly at the end of the file and that zip64
/// records, when present, agree with it.
fn end_record(file: &[u8]) -> Result<End, ZipDirError> {
    let last = file
        .len()
        .checked_sub(EOCD_LEN)
        .ok_or_else(|| Broken("too short for a zip end record (truncated?)".into()))?;
    let lowest = file.len().saturating_sub(EOCD_LEN + usize::from(u16::MAX));
    let pos = (lowest..=last)
        .rev()
        .find(|&p| &file[p..p + 4] == EOCD_SIG)
        .ok_or_else(|| Broken("no end-of-central-directory record (truncated?)".into()))?;
    let r = &file[pos..pos + EOCD_LEN];
    let comment = usize::from(le16(r, 20));
    if pos + EOCD_LEN + comment != file.len() {
        return Err(Ambiguous(format!(
            "the end record at offset {pos} declares a {comment}-byte comment but {} bytes \
             follow it: readers that search for the end record differently could pick another",
            file.len() - pos - EOCD_LEN
        )));
    }
    let (disk, cd_disk) = (le16(r, 4), le16(r, 6));
    let (on_disk, total) = (le16(r, 8), le16(r, 10));
    let (size32, offset32) = (le32(r, 12), le32(r, 16));
    if disk != 0 || cd_disk != 0 || on_disk != total {
        return Err(Unsupported("multi-disk zip archives".into()));
    }
    let locator = pos
        .checked_sub(LOCATOR_LEN)
        .filter(|&l| &file[l..l + 4] == LOCATOR_SIG);
    let Some(loc) = locator else {
        if size32 == u32::MAX || offset32 == u32::MAX {
            return Err(Ambiguous(
                "the end record defers to zip64 records but there is no zip64 locator".into(),
            ));
        }
        return Ok(End {
            records_start: pos as u64,
            entries: u64::from(total),
            cd_offset: u64::from(offset32),
            cd_size: u64::from(size32),
        });
    };
    let l = &file[loc..loc + LOCATOR_LEN];
    let (z64_disk, z64_offset, disks) = (le32(l, 4), le64(l, 8), le32(l, 16));
    if z64_disk != 0 || disks != 1 {
        return Err(Unsupported("multi-disk zip64 archives".into()));
    }
    let z = slice(file, z64_offset, EOCD64_LEN)
        .filter(|z| &z[..4] == EOCD64_SIG)
        .ok_or_else(|| {
            Ambiguous(format!(
                "the zip64 locator points at offset {z64_offset}, where there is no zip64 end \
                 record (miniz would then fall back to the 32-bit record, other readers fail)"
            ))
        })?;
    let record_size = le64(z, 4);
    if record_size < (EOCD64_LEN - 12) as u64
        || z64_offset
            .checked_add(12)
            .and_then(|v| v.checked_add(record_size))
            != Some(loc as u64)
    {
        return Err(Ambiguous(format!(
            "the zip64 end record at offset {z64_offset} does not end where its locator starts \
             (offset {loc})"
        )));
    }
    let (disk64, cd_disk64) = (le32(z, 16), le32(z, 20));
    let (on_disk64, total64) = (le64(z, 24), le64(z, 32));
    let (size64, offset64) = (le64(z, 40), le64(z, 48));
    if disk64 != 0 || cd_disk64 != 0 || on_disk64 != total64 {
        return Err(Unsupported("multi-disk zip64 archives".into()));
    }
    // A 32-bit field holds the value itself or the "see zip64" marker; anything else means two
    // readers see two directories.
    let agrees = |v32: u64, marker: u64, v64: u64| v32 == v64 || v32 == marker;
    if !agrees(u64::from(total), 0xFFFF, total64)
        || !agrees(u64::from(size32), 0xFFFF_FFFF, size64)
        || !agrees(u64::from(offset32), 0xFFFF_FFFF, offset64)
    {
        return Err(Ambiguous(format!(
            "the end record ({total} entries, {size32}-byte directory at offset {offset32}) \
             disagrees with the zip64 end record ({total64} entries, {size64}-byte directory at \
             offset {offset64})"
        )));
    }
    Ok(End {
        records_start: z64_offset,
        entries: total64,
        cd_offset: offset64,
        cd_size: size64,
    })
}

/// Walks an extra field's `(id, size, data)` records, which must fill it exactly.
fn extra_fields(extra: &[u8]) -> Result<Vec<(u16, &[u8])>, ZipDirError> {
    let mut out = Vec::new();
    let mut p = 0usize;
    while p < extra.len() {
        if extra.len() - p < 4 {
            return Err(Broken("a truncated extra field".into()));
        }
        let (id, len) = (le16(extra, p), usize::from(le16(extra, p + 2)));
        let data = extra
            .get(p + 4..p + 4 + len)
            .ok_or_else(|| Broken("an extra field runs past its header".into()))?;
        out.push((id, data));
        p += 4 + len;
    }
    Ok(out)
}

/// The single zip64 extra field of a header, if any.
fn zip64_field<'a>(extra: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ZipDirError> {
    let fields = extra_fields(extra).map_err(|e| Broken(format!("{name}: {e}")))?;
    let mut z = fields.iter().filter(|(id, _)| *id == ZIP64_EXTRA);
    let first = z.next().map(|(_, d)| *d);
    if z.next().is_some() {
        return Err(Ambiguous(format!(
            "{name}: two zip64 extra fields (readers pick different ones)"
        )));
    }
    Ok(first)
}

/// Takes the next 8-byte value of a zip64 extra field for a field that holds the marker.
fn take64(data: &mut &[u8], name: &str) -> Result<u64, ZipDirError> {
    if data.len() < 8 {
        return Err(Broken(format!("{name}: zip64 extra field too short")));
    }
    let v = le64(data, 0);
    *data = &data[8..];
    Ok(v)
}

/// Parses one central-directory header; returns the entry and the header's length.
fn central_header(b: &[u8], file_len: u64) -> Result<(ZipEntry, usize), ZipDirError> {
    if b.len() < CDH_LEN || &b[..4] != CDH_SIG {
        return Err(Broken(
            "a central-directory record is damaged (bad signature or truncated)".into(),
        ));
    }
    let flags = le16(b, 8);
    let method = le16(b, 10);
    let (c32, u32_, lofs32) = (le32(b, 20), le32(b, 24), le32(b, 42));
    let (nlen, elen, clen) = (
        usize::from(le16(b, 28)),
        usize::from(le16(b, 30)),
        usize::from(le16(b, 32)),
    );
    let disk = le16(b, 34);
    let used = CDH_LEN + nlen + elen + clen;
    if b.len() < used {
        return Err(Broken(
            "a central-directory record runs past the directory".into(),
        ));
    }
    let name = b[CDH_LEN..CDH_LEN + nlen].to_vec();
    let shown = String::from_utf8_lossy(&name).into_owned();
    if name.contains(&0) {
        return Err(Ambiguous(format!(
            "the name {shown:?} contains a NUL byte (C readers stop at it)"
        )));
    }
    let extra = &b[CDH_LEN + nlen..CDH_LEN + nlen + elen];
    let (mut csize, mut size, mut lofs) = (u64::from(c32), u64::from(u32_), u64::from(lofs32));
    // miniz reads the zip64 field only when a 32-bit field holds the marker, in this order.
    if c32 == u32::MAX || u32_ == u32::MAX || lofs32 == u32::MAX {
        let mut data = zip64_field(extra, &shown)?.ok_or_else(|| {
            Broken(format!(
                "{shown}: a size marks zip64 but there is no zip64 field"
            ))
        })?;
        if u32_ == u32::MAX {
            size = take64(&mut data, &shown)?;
        }
        if c32 == u32::MAX {
            csize = take64(&mut data, &shown)?;
        }
        if lofs32 == u32::MAX {
            lofs = take64(&mut data, &shown)?;
        }
    } else {
        zip64_field(extra, &shown)?;
    }
    if flags & MASKED_HEADER != 0 {
        return Err(Unsupported(format!(
            "{shown}: a masked local header (torch's reader refuses the archive)"
        )));
    }
    if method != 0 && method != 8 {
        return Err(Unsupported(format!(
            "{shown}: compression method {method} (torch's reader supports stored and deflate)"
        )));
    }
    if disk != 0 {
        return Err(Unsupported(format!("{shown}: entry on another disk")));
    }
    if (method == 0 && csize != size) || (size != 0 && csize == 0) {
        return Err(Broken(format!(
            "{shown}: the directory declares {csize} stored bytes for {size} bytes of data"
        )));
    }
    if lofs
        .checked_add(LFH_LEN as u64)
        .and_then(|v| v.checked_add(csize))
        .is_none_or(|v| v > file_len)
    {
        return Err(Broken(format!(
            "{shown}: data at offset {lofs} of {csize} bytes runs past the end of the file \
             ({file_len} bytes)"
        )));
    }
    let entry = ZipEntry {
        name,
        method,
        flags,
        compressed_size: csize,
        size,
        local_offset: lofs,
        data_start: 0,
        crc32: le32(b, 16),
    };
    Ok((entry, used))
}

#[cfg(test)]
#[path = "zipdir_tests.rs"]
mod tests;
