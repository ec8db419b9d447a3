//! OBB rows (`cx cy w h score class angle`): the other spellings of one rotated box.

use std::f32::consts::FRAC_PI_2;

use super::tests::TOL;
use super::*;

/// OBB rows (`cx cy w h score class angle`): a box and its other spellings are one box.
#[test]
fn a_rotated_box_matches_its_other_spellings_only() {
    let obb = RowsTolerance {
        suppression: Some(Suppression {
            iou: 0.7,
            centred: true,
            class_shift: Some(64.0),
        }),
        ..TOL
    };
    let t = |r: &[[f32; 7]]| {
        let mut d = vec![0.0; 4 * 7];
        for (i, row) in r.iter().enumerate() {
            d[i * 7..i * 7 + 7].copy_from_slice(row);
        }
        RefTensor::new(d, vec![1, 4, 7])
    };
    let a = [40.0, 30.0, 20.0, 12.0, 0.9, 0.0, 0.3];
    let b = [10.0, 50.0, 8.0, 6.0, 0.8, 1.0, -0.2];
    let want = t(&[a, b]);
    let pass = |g: [f32; 7]| nms_rows_check(&t(&[g, b]), &want, None, obb)[0].pass;
    assert!(pass(a));
    // Width and height exchanged, a quarter turn on (either way), or half a turn on.
    let swapped = |turn: f32| [a[0], a[1], a[3], a[2], a[4], a[5], a[6] + turn];
    assert!(pass(swapped(FRAC_PI_2)));
    assert!(pass(swapped(-FRAC_PI_2)));
    let turned = |turn: f32| {
        let mut r = a;
        r[6] += turn;
        r
    };
    assert!(pass(turned(std::f32::consts::PI)));
    // Exchanged without the turn, or turned without the exchange: another box.
    assert!(!pass(swapped(0.0)));
    assert!(!pass(turned(FRAC_PI_2)));
    assert!(!pass(turned(0.05)));
    // Axis-aligned rows (not OBB) keep their columns as they are.
    let plain = |r: &[[f32; 7]]| nms_rows_check(&t(r), &want, None, TOL)[0].pass;
    assert!(plain(&[a, b]));
    assert!(!plain(&[swapped(FRAC_PI_2), b]));
}
