//! Golden `.npz` files with hostile `.npy` members get one clear error naming the file and member.

use std::io::Write;

use fuse_ema::parity::npz::Npz;

fn npz(dir: &std::path::Path, header: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join("golden.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("output0.npy", zip::write::SimpleFileOptions::default())
        .unwrap();
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(data);
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
    path
}

#[test]
fn hostile_members_are_refused_with_the_file_and_member_named() {
    let dir = tempfile::tempdir().unwrap();
    let ok = npz(
        dir.path(),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }",
        &[0, 0, 128, 63, 0, 0, 0, 64],
    );
    let golden = Npz::open(&ok).unwrap();
    let t = golden.get("output0").expect("array read");
    assert_eq!(t.shape, [1, 2]);
    let cases = [
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904)}",
            "overflows",
        ),
        (
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2)}",
            "Fortran-order arrays are not read",
        ),
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1,)}",
            "dtype '<f8' is not read",
        ),
        // Integer class maps are read, but never a label f32 would round.
        (
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1,)}",
            "integer element 4611686019492741120 is beyond what f32 holds exactly",
        ),
        ("{'descr': '<f4', 'fortran_order': False", "bad header"),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2)}",
            "needs 24 bytes of data, the array holds 8",
        ),
    ];
    for (header, want) in cases {
        let path = npz(dir.path(), header, &[0, 0, 128, 63, 0, 0, 0, 64]);
        let e = Npz::open(&path).err().expect("refused");
        assert!(
            matches!(e, fuse_ema::parity::ParityError::Npy { .. }),
            "{header}: {e:?}"
        );
        let e = e.to_string();
        let prefix = format!("{}: output0.npy: ", path.display());
        assert!(e.starts_with(&prefix), "{header}: {e}");
        assert!(e.contains(want), "{header}: {e}");
    }
}
