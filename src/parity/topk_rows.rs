//! End-to-end (one-to-one head) rows compared as sets: output (B, K, 6 + extra — box, score, class,
//! extra channels) holds the k best (anchor, class) pairs in score order, and where two scores
//! tie, or differ by less than the two sides' rounding, their rows may come in either order, and
//! a pair at the top-k cut may be kept by one side only. So each image's rows are matched
//! across the two sides instead of compared by position: a row matches a row of the same class
//! whose every column is within its limit (atol + rtol · max |column| of the reference). A row
//! may stay unmatched only at the cut: its score within twice the score limit of the lowest
//! score the reference kept.

use super::{OutputStats, TaskCheck, Tolerance};

/// The class column of a row; compared exactly.
const CLASS: usize = 5;
/// The score column.
const SCORE: usize = 4;

/// Compares rows `got` (ONNX) with `want` (reference), both of `shape` (B, K, C ≥ 6): the
/// output's statistics over matched rows (column = channel) and one task check per image.
pub fn compare_rows(
    name: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    tol: Tolerance,
) -> (OutputStats, Vec<TaskCheck>) {
    let mut stats = OutputStats {
        name: name.to_string(),
        shape: shape.to_vec(),
        max_abs: 0.0,
        max_rel: 0.0,
        mean_abs: 0.0,
        cosine: 1.0,
        reference_max: want.iter().fold(0f64, |m, &v| m.max((v as f64).abs())),
        worst_channel: 0,
        worst_channel_max_abs: 0.0,
        worst_channel_limit: tol.atol,
        worst_channel_f16_noise: None,
        pass: false,
    };
    let &[b, k, c] = shape else {
        stats.max_abs = f64::INFINITY;
        return (stats, Vec::new());
    };
    if c < 6 || got.len() != b * k * c || want.len() != b * k * c {
        stats.max_abs = f64::INFINITY;
        return (stats, Vec::new());
    }
    let limit: Vec<f64> = (0..c)
        .map(|j| {
            let peak = (0..b * k).fold(0f64, |m, r| m.max((want[r * c + j] as f64).abs()));
            tol.atol + tol.rtol * peak
        })
        .collect();
    let close = |x: &[f32], y: &[f32]| {
        x[CLASS] == y[CLASS]
            && (0..c).all(|j| ((x[j] - y[j]).abs() as f64) <= limit[j] || j == CLASS)
    };
    let (mut col_max, mut sum_abs, mut count) = (vec![0f64; c], 0f64, 0usize);
    let (mut dot, mut gg, mut ww) = (0f64, 0f64, 0f64);
    let mut checks = Vec::new();
    for img in 0..b {
        let rows = |d: &[f32]| -> Vec<Vec<f32>> {
            (0..k)
                .map(|r| d[(img * k + r) * c..(img * k + r + 1) * c].to_vec())
                .collect()
        };
        let (g, w) = (rows(got), rows(want));
        let floor = w.iter().map(|r| r[SCORE]).fold(f32::INFINITY, f32::min);
        let at_cut = |r: &[f32]| ((r[SCORE] - floor).abs() as f64) <= 2.0 * limit[SCORE];
        let mut used = vec![false; g.len()];
        let (mut matched, mut cut, mut wrong) = (0usize, 0usize, Vec::new());
        for r in &w {
            match (0..g.len()).find(|&j| !used[j] && close(r, &g[j])) {
                Some(j) => {
                    used[j] = true;
                    matched += 1;
                    for (col, (x, y)) in g[j].iter().zip(r).enumerate() {
                        let d = (x - y).abs() as f64;
                        col_max[col] = col_max[col].max(d);
                        stats.max_rel = stats.max_rel.max(d / ((*y as f64).abs() + 1e-6));
                        sum_abs += d;
                        count += 1;
                        dot += *x as f64 * *y as f64;
                        gg += (*x as f64).powi(2);
                        ww += (*y as f64).powi(2);
                    }
                }
                None if at_cut(r) => cut += 1,
                None => wrong.push(format!("reference row {r:?} has no match")),
            }
        }
        for (j, r) in g.iter().enumerate() {
            if used[j] {
                continue;
            }
            if at_cut(r) {
                cut += 1;
            } else {
                wrong.push(format!("ONNX row {r:?} has no match"));
            }
        }
        checks.push(TaskCheck {
            kind: "detection rows",
            image: img,
            pass: wrong.is_empty(),
            detail: if wrong.is_empty() {
                format!("{matched} of {k} rows matched as a set ({cut} unmatched at the top-k cut)")
            } else {
                format!("{matched} of {k} rows matched; {}", wrong.join("; "))
            },
        });
    }
    // The worst column: the largest difference against its limit, class excluded.
    let worst = (0..c)
        .filter(|&j| j != CLASS)
        .max_by(|&p, &q| (col_max[p] / limit[p]).total_cmp(&(col_max[q] / limit[q])))
        .unwrap_or(0);
    stats.max_abs = col_max.iter().copied().fold(0.0, f64::max);
    stats.mean_abs = sum_abs / count.max(1) as f64;
    stats.cosine = if gg > 0.0 && ww > 0.0 {
        dot / (gg.sqrt() * ww.sqrt())
    } else {
        1.0
    };
    stats.worst_channel = worst;
    stats.worst_channel_max_abs = col_max[worst];
    stats.worst_channel_limit = limit[worst];
    stats.pass = checks.iter().all(|t| t.pass);
    (stats, checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance::F32;

    /// One image of rows (x1 y1 x2 y2 score class extra), scores descending.
    fn rows() -> Vec<[f32; 7]> {
        vec![
            [1.0, 2.0, 11.0, 12.0, 0.9, 0.0, 3.0],
            [20.0, 20.0, 30.0, 40.0, 0.8, 1.0, -1.0],
            [5.0, 5.0, 9.0, 9.0, 0.5, 1.0, 0.5],
            [40.0, 2.0, 60.0, 9.0, 0.2, 0.0, 0.0],
        ]
    }

    fn flat(r: &[[f32; 7]]) -> Vec<f32> {
        r.iter().flatten().copied().collect()
    }

    fn check(got: &[[f32; 7]], want: &[[f32; 7]]) -> (OutputStats, Vec<TaskCheck>) {
        compare_rows("output0", &[1, 4, 7], &flat(got), &flat(want), TOL)
    }

    #[test]
    fn equal_rows_pass() {
        let (s, t) = check(&rows(), &rows());
        assert!(s.pass && t[0].pass, "{}", t[0].detail);
        assert_eq!(s.max_abs, 0.0);
    }

    #[test]
    fn rows_reordered_on_a_tie_pass() {
        let mut want = rows();
        want[1][4] = 0.5; // rows 1 and 2 tie; the ONNX lists them the other way round
        let mut got = want.clone();
        got.swap(1, 2);
        let (s, t) = check(&got, &want);
        assert!(s.pass, "{}", t[0].detail);
    }

    #[test]
    fn a_wrong_row_fails() {
        // A moved box, a wrong class, a wrong extra channel: each alone fails.
        for (col, v) in [(0, 1.5), (5, 1.0), (6, 3.5)] {
            let mut got = rows();
            got[0][col] = v;
            let (s, t) = check(&got, &rows());
            assert!(!s.pass, "column {col} changed to {v} must fail");
            assert!(t[0].detail.contains("has no match"), "{}", t[0].detail);
        }
    }

    #[test]
    fn only_the_row_at_the_cut_may_differ() {
        // The lowest-scoring row differs (another pair kept at the top-k cut, at a tying score).
        let mut got = rows();
        got[3] = [0.0, 0.0, 4.0, 4.0, 0.2, 1.0, 0.0];
        let (s, t) = check(&got, &rows());
        assert!(s.pass, "{}", t[0].detail);
        assert!(
            t[0].detail.contains("2 unmatched at the top-k cut"),
            "{}",
            t[0].detail
        );
        // The same swap higher up is a wrong row.
        let mut got = rows();
        got[2] = [0.0, 0.0, 4.0, 4.0, 0.5, 1.0, 0.0];
        assert!(!check(&got, &rows()).0.pass);
    }

    #[test]
    fn a_shape_that_is_not_rows_fails() {
        let (s, _) = compare_rows("output0", &[1, 28], &flat(&rows()), &flat(&rows()), TOL);
        assert!(!s.pass);
    }
}
