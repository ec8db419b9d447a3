//! Directory checks on archives written by hand from the zip format description.

use super::*;

/// A stored zip written from the format description: local headers, then the directory, then
/// the end record.
fn build(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data) in entries {
        let ofs = out.len() as u32;
        let n = name.len() as u16;
        let size = data.len() as u32;
        out.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        out.extend_from_slice(&0u32.to_le_bytes()); // crc (not checked)
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        cd.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        cd.extend_from_slice(&0u32.to_le_bytes());
        cd.extend_from_slice(&size.to_le_bytes());
        cd.extend_from_slice(&size.to_le_bytes());
        cd.extend_from_slice(&n.to_le_bytes());
        cd.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        cd.extend_from_slice(&ofs.to_le_bytes());
        cd.extend_from_slice(name.as_bytes());
    }
    let cd_ofs = out.len() as u32;
    out.extend_from_slice(&cd);
    out.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
    let count = entries.len() as u16;
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_ofs.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn ambiguous(b: &[u8]) -> String {
    match ZipDir::parse(b) {
        Err(Ambiguous(m)) => m,
        other => panic!("expected an ambiguity, got {other:?}"),
    }
}

#[test]
fn a_clean_archive_reads_with_case_insensitive_lookup() {
    let z = build(&[("archive/data.pkl", b"abc"), ("archive/version", b"3\n")]);
    let d = ZipDir::parse(&z).unwrap();
    assert_eq!(d.entries.len(), 2);
    let e = d.find("ARCHIVE/Data.PKL").unwrap();
    assert_eq!(&z[e.data_start as usize..][..3], b"abc");
    assert!(d.find("archive/data").is_none());
}

#[test]
fn names_colliding_in_case_or_repeated_are_refused() {
    let z = build(&[("base/data.pkl", b"a"), ("base/DATA.PKL", b"b")]);
    assert!(ambiguous(&z).contains("differ only in case"));
    let z = build(&[("base/data.pkl", b"a"), ("base/data.pkl", b"b")]);
    assert!(ambiguous(&z).contains("twice"));
}

#[test]
fn bytes_outside_every_entry_are_refused() {
    // A second, hostile directory hidden between the entries and the real one.
    let z = build(&[("a/data.pkl", b"x")]);
    let cd_ofs = u32::from_le_bytes(z[z.len() - 6..z.len() - 2].try_into().unwrap()) as usize;
    let mut gap = z[..cd_ofs].to_vec();
    gap.extend_from_slice(b"PK\x01\x02 junk that another reader could take");
    let new_ofs = gap.len() as u32;
    gap.extend_from_slice(&z[cd_ofs..]);
    let n = gap.len();
    gap[n - 6..n - 2].copy_from_slice(&new_ofs.to_le_bytes());
    assert!(ambiguous(&gap).contains("belong to no entry"));
}

#[test]
fn an_end_record_that_disagrees_is_refused() {
    let z = build(&[("a/data.pkl", b"x"), ("a/version", b"3")]);
    let n = z.len();
    let mut wrong_count = z.clone();
    wrong_count[n - 12..n - 10].copy_from_slice(&1u16.to_le_bytes());
    wrong_count[n - 14..n - 12].copy_from_slice(&1u16.to_le_bytes());
    assert!(ambiguous(&wrong_count).contains("entries"));
    let mut wrong_size = z.clone();
    let size = u32::from_le_bytes(z[n - 10..n - 6].try_into().unwrap());
    wrong_size[n - 10..n - 6].copy_from_slice(&(size - 1).to_le_bytes());
    assert!(ambiguous(&wrong_size).contains("end records start"));
    // A comment length that does not reach the end: another end record could be chosen.
    let mut comment = z.clone();
    comment[n - 2..].copy_from_slice(&5u16.to_le_bytes());
    assert!(ambiguous(&comment).contains("comment"));
    // Two end records: the last one wins in miniz, but its comment swallows the first.
    let mut two = z.clone();
    two.extend_from_slice(&z[n - 22..]);
    assert!(ambiguous(&two).contains("end record"));
}

#[test]
fn local_headers_must_repeat_the_directory() {
    let z = build(&[("a/data.pkl", b"xyz")]);
    let mut renamed = z.clone();
    renamed[30] = b'b'; // the local copy of the name
    assert!(ambiguous(&renamed).contains("local header"));
    let mut resized = z.clone();
    resized[18..22].copy_from_slice(&2u32.to_le_bytes());
    resized[22..26].copy_from_slice(&2u32.to_le_bytes());
    assert!(ambiguous(&resized).contains("local header declares"));
}

#[test]
fn overlapping_entries_are_refused() {
    // Two directory records for one local header (same data read under two names).
    let z = build(&[("a/data.pkl", b"x"), ("a/other.pkl", b"y")]);
    let cd = z.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    let second = z[cd + 4..]
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .unwrap()
        + cd
        + 4;
    let mut same = z.clone();
    same[second + 42..second + 46].copy_from_slice(&0u32.to_le_bytes());
    let m = match ZipDir::parse(&same) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(m.contains("local header") || m.contains("overlaps"), "{m}");
}

#[test]
fn truncated_and_foreign_files_are_broken_not_panics() {
    let z = build(&[("a/data.pkl", b"xyz")]);
    for cut in [0, 10, 30, z.len() - 23, z.len() - 1] {
        assert!(ZipDir::parse(&z[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn miniz_reading_follows_the_end_record_without_checks() {
    // Two directories: the end record points at the first, which names other data.
    let z = build(&[("a/data.pkl", b"clean"), ("a/evil.pkl", b"hostile")]);
    let n = z.len();
    let cd_ofs = u32::from_le_bytes(z[n - 6..n - 2].try_into().unwrap()) as usize;
    let cd = &z[cd_ofs..n - 22];
    let mut hostile = cd.to_vec();
    // Rename the second record to a/data.pkl's case twin: miniz takes it, strict parsing refuses.
    let second = hostile[4..]
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .unwrap()
        + 4;
    hostile[second + 46..second + 56].copy_from_slice(b"a/DATA.PKL");
    let mut f = z[..cd_ofs].to_vec();
    f.extend_from_slice(&hostile);
    f.extend_from_slice(&z[n - 22..]);
    assert!(ZipDir::parse(&f).is_err());
    let entries = miniz_entries(&f);
    let names: Vec<String> = entries.iter().map(ZipEntry::display).collect();
    assert_eq!(names, ["a/data.pkl", "a/DATA.PKL"]);
    let e = &entries[1];
    assert_eq!(&f[e.data_start as usize..][..7], b"hostile");
    assert!(miniz_entries(b"PK\x03\x04 not a zip").is_empty());
}

#[test]
fn data_descriptors_are_part_of_their_entry() {
    // One entry written by a streaming writer: flag bit 3, zero sizes in the local header, a
    // signed data descriptor after the data.
    let name = b"a/data.pkl";
    let data = b"xyz";
    let mut f = b"PK\x03\x04\x14\x00\x08\x00\x00\x00\x00\x00\x00\x00".to_vec();
    f.extend_from_slice(&[0; 12]); // crc and both sizes deferred
    f.extend_from_slice(&(name.len() as u16).to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(name);
    f.extend_from_slice(data);
    f.extend_from_slice(b"PK\x07\x08\x00\x00\x00\x00");
    f.extend_from_slice(&3u32.to_le_bytes());
    f.extend_from_slice(&3u32.to_le_bytes());
    let cd_ofs = f.len() as u32;
    let mut cd = b"PK\x01\x02\x14\x00\x14\x00\x08\x00\x00\x00\x00\x00\x00\x00".to_vec();
    cd.extend_from_slice(&0u32.to_le_bytes());
    cd.extend_from_slice(&3u32.to_le_bytes());
    cd.extend_from_slice(&3u32.to_le_bytes());
    cd.extend_from_slice(&(name.len() as u16).to_le_bytes());
    cd.extend_from_slice(&[0; 12]);
    cd.extend_from_slice(&0u32.to_le_bytes());
    cd.extend_from_slice(name);
    f.extend_from_slice(&cd);
    f.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00");
    f.extend_from_slice(&(cd.len() as u32).to_le_bytes());
    f.extend_from_slice(&cd_ofs.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    let d = ZipDir::parse(&f).unwrap();
    assert_eq!(d.find("a/data.pkl").unwrap().size, 3);
    // Without the flag the same 16 bytes belong to no entry.
    let mut unflagged = f.clone();
    unflagged[6] = 0;
    let at = cd_ofs as usize + 8;
    unflagged[at] = 0;
    assert!(ZipDir::parse(&unflagged).is_err());
}
