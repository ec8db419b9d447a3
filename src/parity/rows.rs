//! Detection rows (`--nms`: (B, max_det, 6 + extra) of `x1 y1 x2 y2 score class extra…`) compared
//! as sets, image by image: rows may come in another order where scores tie, so each row must
//! find a row of the same class on the other side with every column within that column's limit.

use super::TaskCheck;
use crate::reference::ops::T;

/// How close two rows must be, and which rows may go unmatched.
#[derive(Clone, Copy, Debug)]
pub struct RowsTolerance {
    /// Absolute part of each column's limit.
    pub atol: f64,
    /// Relative part, of the column's largest magnitude (over the reference's rows).
    pub rtol: f64,
    /// The confidence threshold: a row whose score is this close to it (within twice the score
    /// column's limit) may be kept by one side and dropped by the other.
    pub conf: f32,
    /// Pose rows: values per keypoint (2 or 3) after the class column.
    pub kpt_dim: Option<usize>,
    /// f16 models: the allowance for f16 rounding added to the limit of each column group (see
    /// [`group`]), a multiple of the reference's emulated f16 noise in those channels.
    pub noise: [f64; 5],
}

/// Which columns share one scale (the relative part of their limit): the box corners and
/// keypoint coordinates are all pixels, keypoint visibilities are probabilities, mask
/// coefficients and angles are their own kind; the score stands alone. A column alone would
/// take its scale from the few rows there are, so a coordinate near 0 would get a limit far below
/// the rounding of the pixel values it was computed with.
pub(super) fn group(j: usize, kpt_dim: Option<usize>) -> usize {
    match (j, kpt_dim) {
        (0..=3, _) => 0,
        (4, _) => 1,
        (5, _) => 2,
        (_, Some(d)) if (j - 6) % d < 2 => 0,
        (_, Some(_)) => 3,
        _ => 4,
    }
}

/// Compares `got` with `want` (reference), both (B, K, C ≥ 6), as detection sets per image.
/// All-zero rows are padding. A row may go unmatched only where the set itself is ambiguous: its
/// score at or below the confidence threshold, or at the lowest score of a full list (the
/// `max_det` cut).
pub fn rows_check(got: &T, want: &T, tol: RowsTolerance) -> Vec<TaskCheck> {
    if got.shape != want.shape || got.shape.len() != 3 || got.shape[2] < 6 {
        return vec![TaskCheck {
            kind: "detection rows",
            image: 0,
            pass: false,
            detail: format!(
                "rows of shape {:?} vs {:?} (expected (B, K, 6 + extra) on both)",
                got.shape, want.shape
            ),
        }];
    }
    let (b, k, c) = (want.shape[0], want.shape[1], want.shape[2]);
    let mut peak = [0f64; 5];
    for j in 0..c {
        let g = &mut peak[group(j, tol.kpt_dim)];
        for r in 0..b * k {
            *g = g.max(want.data[r * c + j].abs() as f64);
        }
    }
    let limit: Vec<f64> = (0..c)
        .map(|j| {
            let g = group(j, tol.kpt_dim);
            tol.atol + tol.rtol * peak[g] + tol.noise[g]
        })
        .collect();
    // Two classes whose sigmoid saturates at 1.0 tie; which one is "best" is then rounding.
    let saturated = |s: f32| ((1.0 - s) as f64) <= limit[4];
    let close = |x: &[f32], y: &[f32]| {
        (x[5] == y[5] || (saturated(x[4]) && saturated(y[4])))
            && x.iter()
                .take(5)
                .zip(y)
                .zip(&limit)
                .all(|((p, q), l)| ((p - q).abs() as f64) <= *l)
            && x[6..]
                .iter()
                .zip(&y[6..])
                .zip(&limit[6..])
                .all(|((p, q), l)| ((p - q).abs() as f64) <= *l)
    };
    (0..b)
        .map(|img| {
            let rows = |t: &T| -> Vec<Vec<f32>> {
                (0..k)
                    .map(|r| t.data[(img * k + r) * c..(img * k + r + 1) * c].to_vec())
                    .filter(|r| r.iter().any(|v| *v != 0.0))
                    .collect()
            };
            let (g, w) = (rows(got), rows(want));
            let near = |s: f32, at: f32| ((s - at).abs() as f64) <= 2.0 * limit[4];
            let borderline = |r: &[f32], side: &[Vec<f32>]| {
                let floor = side.iter().map(|r| r[4]).fold(f32::INFINITY, f32::min);
                // OBB rows keep candidates at or below the threshold with score 0, whose order
                // (and so which of them fast NMS keeps) is the sort's order of ties.
                // Two candidates tied at a saturated score come in the sort's order of ties, and
                // the first suppresses the second where they overlap.
                let tied = saturated(r[4]) && side.iter().filter(|o| saturated(o[4])).count() > 1;
                r[4] <= tol.conf
                    || near(r[4], tol.conf)
                    || (side.len() == k && near(r[4], floor))
                    || tied
            };
            let mut problems = Vec::new();
            for (name, from, to) in [("reference", &w, &g), ("ONNX", &g, &w)] {
                let mut used = vec![false; to.len()];
                for r in from.iter() {
                    match (0..to.len()).find(|&j| !used[j] && close(r, &to[j])) {
                        Some(j) => used[j] = true,
                        None if borderline(r, from) => {}
                        None => problems.push(format!(
                            "{name} row class {} score {:.4} box [{:.2}, {:.2}, {:.2}, {:.2}] unmatched",
                            r[5], r[4], r[0], r[1], r[2], r[3]
                        )),
                    }
                }
            }
            TaskCheck {
                kind: "detection rows",
                image: img,
                pass: problems.is_empty(),
                detail: if problems.is_empty() {
                    format!(
                        "{} vs {} rows, each matched by class and every column",
                        g.len(),
                        w.len()
                    )
                } else {
                    format!("{} vs {} rows; {}", g.len(), w.len(), problems.join(", "))
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: RowsTolerance = RowsTolerance {
        atol: 1e-4,
        rtol: 1e-3,
        conf: 0.25,
        kpt_dim: None,
        noise: [0.0; 5],
    };

    fn rows(r: &[[f32; 6]], k: usize) -> T {
        let mut d = vec![0.0; k * 6];
        for (i, row) in r.iter().enumerate() {
            d[i * 6..i * 6 + 6].copy_from_slice(row);
        }
        T::new(d, vec![1, k, 6])
    }

    fn scene() -> Vec<[f32; 6]> {
        vec![
            [6.0, 6.0, 14.0, 14.0, 0.9, 0.0],
            [30.0, 30.0, 40.0, 36.0, 0.8, 1.0],
            [2.0, 40.0, 10.0, 50.0, 0.6, 0.0],
        ]
    }

    #[test]
    fn the_same_rows_in_another_order_pass() {
        let want = rows(&scene(), 5);
        let mut s = scene();
        s.swap(0, 2);
        let c = rows_check(&rows(&s, 5), &want, TOL);
        assert!(c[0].pass, "{}", c[0].detail);
        assert!(c[0].detail.starts_with("3 vs 3"), "{}", c[0].detail);
    }

    #[test]
    fn a_wrong_row_fails() {
        let want = rows(&scene(), 5);
        for (col, by) in [(0, 0.5), (3, -0.2), (4, 0.01), (5, 1.0)] {
            let mut s = scene();
            s[1][col] += by;
            let c = rows_check(&rows(&s, 5), &want, TOL);
            assert!(!c[0].pass, "column {col} moved by {by}");
            assert!(c[0].detail.contains("unmatched"), "{}", c[0].detail);
        }
    }

    #[test]
    fn a_missing_or_extra_row_fails_unless_at_the_threshold() {
        let want = rows(&scene(), 5);
        let got = rows(&scene()[..2], 5);
        assert!(!rows_check(&got, &want, TOL)[0].pass, "missing row");
        assert!(!rows_check(&want, &got, TOL)[0].pass, "extra row");
        let mut s = scene();
        s[2][4] = 0.2501;
        let want = rows(&s, 5);
        let c = rows_check(&rows(&s[..2], 5), &want, TOL);
        assert!(c[0].pass, "a row at the threshold may go: {}", c[0].detail);
    }

    #[test]
    fn classes_tied_at_a_saturated_score_match() {
        let mut s = scene();
        s[0][4] = 1.0;
        let want = rows(&s, 5);
        s[0][5] = 1.0;
        s[0][4] = 0.999_99;
        let c = rows_check(&rows(&s, 5), &want, TOL);
        assert!(c[0].pass, "{}", c[0].detail);
    }

    #[test]
    fn keypoint_coordinates_share_the_pixel_scale() {
        // (x, y, visibility) for one keypoint after the class.
        let row = |x: f32, v: f32| [6.0, 6.0, 140.0, 14.0, 0.9, 0.0, x, 30.0, v];
        // A padding row after it: a full list would let its lowest row go unmatched.
        let t = |x: f32, v: f32| {
            let mut d = row(x, v).to_vec();
            d.extend([0.0; 9]);
            T::new(d, vec![1, 2, 9])
        };
        let pose = RowsTolerance {
            kpt_dim: Some(3),
            ..TOL
        };
        // 0.05 px on a coordinate near 0: within the pixels' limit (1e-4 + 1e-3 · 140).
        assert!(rows_check(&t(0.05, 0.5), &t(0.0, 0.5), pose)[0].pass);
        // Alone, that column's limit would be 1e-4.
        assert!(!rows_check(&t(0.05, 0.5), &t(0.0, 0.5), TOL)[0].pass);
        // Visibilities keep their own scale.
        assert!(!rows_check(&t(0.0, 0.51), &t(0.0, 0.5), pose)[0].pass);
    }

    #[test]
    fn a_row_tied_at_saturation_may_go_but_a_lone_one_may_not() {
        let mut s = scene();
        s[0][4] = 1.0;
        s[1][4] = 1.0;
        let want = rows(&s, 5);
        // The other side kept one of the two tied rows only.
        let got = rows(&[s[0], s[2]], 5);
        assert!(rows_check(&got, &want, TOL)[0].pass);
        let mut lone = scene();
        lone[0][4] = 1.0;
        let want = rows(&lone, 5);
        assert!(!rows_check(&rows(&lone[1..], 5), &want, TOL)[0].pass);
    }

    #[test]
    fn mismatched_shapes_fail() {
        let c = rows_check(&rows(&scene(), 4), &rows(&scene(), 5), TOL);
        assert!(!c[0].pass);
    }
}
