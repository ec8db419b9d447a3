//! `Tensor::check_view`: a strided view inside its storage passes; views that reach past it,
//! overflow, or expand (stride 0) past what is stored fail.

use std::sync::Arc;

use super::*;

fn view(shape: &[usize], strides: &[usize], offset: usize, n: usize) -> Result<Tensor, ViewError> {
    let storage = Buffer::Owned((0..n as u8).collect::<Vec<_>>().into());
    let key: Arc<str> = "0".into();
    Tensor::new_view(
        DType::U8,
        shape.to_vec(),
        strides.to_vec(),
        offset,
        storage,
        key,
    )
}

fn refused(shape: &[usize], strides: &[usize], offset: usize, n: usize) -> String {
    match view(shape, strides, offset, n) {
        Ok(t) => panic!("accepted {t:?}"),
        Err(e) => e.0,
    }
}

#[test]
fn an_offset_strided_view_inside_its_storage_passes() {
    // Rows 0..2, columns 1..3 of a 2x3 matrix: the last element is byte 5 of 6.
    let t = view(&[2, 2], &[3, 1], 1, 6).unwrap();
    assert_eq!(t.check_view(), Ok(()));
    assert_eq!(&*t.to_contiguous_bytes().unwrap(), &[1, 2, 4, 5]);
}

#[test]
fn a_view_reaching_past_its_storage_fails() {
    // One element too far: a row stride of 4 puts the last element at byte 6 of 6.
    assert!(refused(&[2, 2], &[4, 1], 1, 6).contains("reaches element 6"));
    // An offset alone past the end.
    assert!(refused(&[1], &[1], 6, 6).contains("reaches element 6"));
    // Fields edited after construction are checked again.
    let mut t = view(&[2, 2], &[3, 1], 1, 6).unwrap();
    t.offset = 2;
    assert!(t.check_view().is_err());
}

#[test]
fn a_stride_0_expansion_past_the_storage_fails() {
    // torch's expand: 1000 elements described by one stored byte.
    assert!(refused(&[1000], &[0], 0, 1).contains("1000 elements"));
}

#[test]
fn overflowing_sizes_fail() {
    // The span (d − 1) · stride wraps past usize::MAX.
    assert!(refused(&[3, 1], &[usize::MAX / 2 + 1, 1], 0, 8).contains("overflows"));
    // Offset plus span wraps.
    assert!(refused(&[2], &[usize::MAX], 1, 8).contains("overflows"));
    // The element count itself wraps.
    assert!(refused(&[usize::MAX, 2], &[1, 1], 0, 8).contains("overflows"));
    assert!(refused(&[2], &[1, 1], 0, 8).contains("differ in rank"));
}
