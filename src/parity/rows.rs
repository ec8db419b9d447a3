//! Outputs made of detection rows — RT-DETR's (B, K, 6): cx, cy, w, h, score, class, the top K
//! of queries × classes — compared as a set per image: where two scores are within rounding of
//! each other the two sides may order those rows differently, so a row is matched with the
//! other side's closest row of the same class, column by column within the limit. A row may stay
//! unmatched only at the top-K cut (its score within twice the score limit of the lowest kept
//! score), where a near-tie decides which of two rows is kept.

use super::{OutputStats, TaskCheck, Tolerance};
use crate::checkpoint::py::M;

/// The parity task name of row outputs (the model's task stays `detect`).
pub const ROWS_TASK: &str = "detect-rows";

/// The task the parity check compares `root`'s outputs as: [`ROWS_TASK`] for RT-DETR, else
/// `task`.
pub fn parity_task<'a>(root: M, task: &'a str) -> &'a str {
    let head = root
        .child("model")
        .ok()
        .and_then(|l| l.children().pop().map(|(_, h)| h));
    match head.map(|h| h.class()).as_deref() {
        Some("RTDETRDecoder") => ROWS_TASK,
        _ => task,
    }
}

/// Compares (B, K, C ≥ 6) rows image by image as sets; returns the output's statistics (the
/// "channel" is the column) and one check per image.
pub fn compare_rows(
    name: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    tol: Tolerance,
) -> (OutputStats, Vec<TaskCheck>) {
    let fail = |why: String| {
        let mut s = super::compare(name, &[], &[], &[], tol);
        s.shape = shape.to_vec();
        s.max_abs = f64::INFINITY;
        s.pass = false;
        let c = TaskCheck {
            kind: "rows",
            image: 0,
            pass: false,
            detail: why,
        };
        (s, vec![c])
    };
    let [b, k, c] = shape[..] else {
        return fail(format!("rows output of shape {shape:?}"));
    };
    if c < 6 || got.len() != b * k * c || want.len() != got.len() {
        return fail(format!("rows output of shape {shape:?}"));
    }
    let mut cref = vec![0f64; c];
    for r in want.chunks_exact(c) {
        for (m, v) in cref.iter_mut().zip(r) {
            *m = m.max((*v as f64).abs());
        }
    }
    let limit: Vec<f64> = cref.iter().map(|m| tol.atol + tol.rtol * m).collect();
    let (mut cmax, mut sum, mut count, mut nan) = (vec![0f64; c], 0f64, 0usize, false);
    let (mut dot, mut gg, mut ww) = (0f64, 0f64, 0f64);
    let mut checks = Vec::new();
    for img in 0..b {
        let rows = |d: &[f32]| -> Vec<Vec<f32>> {
            d[img * k * c..(img + 1) * k * c]
                .chunks_exact(c)
                .map(<[f32]>::to_vec)
                .collect()
        };
        let (g, w) = (rows(got), rows(want));
        let floor = w.iter().map(|r| r[4]).fold(f32::INFINITY, f32::min) as f64;
        let at_cut = |r: &[f32]| ((r[4] as f64) - floor).abs() <= 2.0 * limit[4];
        let mut used = vec![false; k];
        let mut unmatched = Vec::new();
        for r in &w {
            // The unused row of the same class nearest in units of each column's limit.
            let best = (0..k)
                .filter(|&j| !used[j] && g[j][5] == r[5])
                .map(|j| {
                    let worst = (0..c)
                        .map(|col| (g[j][col] as f64 - r[col] as f64).abs() / limit[col])
                        .fold(
                            0f64,
                            |a, v| if v.is_nan() { f64::INFINITY } else { a.max(v) },
                        );
                    (j, worst)
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((j, worst)) if worst <= 1.0 => {
                    used[j] = true;
                    for col in 0..c {
                        let (x, y) = (g[j][col] as f64, r[col] as f64);
                        let d = (x - y).abs();
                        nan |= d.is_nan();
                        cmax[col] = cmax[col].max(d);
                        sum += d;
                        count += 1;
                        dot += x * y;
                        gg += x * x;
                        ww += y * y;
                    }
                }
                _ => unmatched.push(("PyTorch/reference", r.clone())),
            }
        }
        for (j, r) in g.iter().enumerate() {
            if !used[j] {
                unmatched.push(("ONNX", r.clone()));
            }
        }
        let wrong: Vec<String> = unmatched
            .iter()
            .filter(|(_, r)| !at_cut(r))
            .map(|(side, r)| format!("{side} row {r:?}"))
            .collect();
        checks.push(TaskCheck {
            kind: "rows",
            image: img,
            pass: wrong.is_empty(),
            detail: if wrong.is_empty() {
                format!(
                    "{} of {k} rows matched as a set ({} unmatched at the top-{k} cut)",
                    k - unmatched.len() / 2,
                    unmatched.len() / 2
                )
            } else {
                let more = wrong.len().saturating_sub(4);
                let tail = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "{} rows without a match: {}{tail}",
                    wrong.len(),
                    wrong[..wrong.len().min(4)].join(", ")
                )
            },
        });
    }
    let worst = (0..c)
        .max_by(|&a, &b| (cmax[a] / limit[a]).total_cmp(&(cmax[b] / limit[b])))
        .unwrap_or(0);
    let pass = !nan && checks.iter().all(|t| t.pass) && (0..c).all(|j| cmax[j] <= limit[j]);
    let stats = OutputStats {
        name: name.to_string(),
        shape: shape.to_vec(),
        max_abs: if nan {
            f64::NAN
        } else {
            cmax.iter().copied().fold(0.0, f64::max)
        },
        max_rel: 0.0,
        mean_abs: sum / count.max(1) as f64,
        cosine: if gg > 0.0 && ww > 0.0 {
            dot / (gg.sqrt() * ww.sqrt())
        } else {
            1.0
        },
        reference_max: cref.iter().copied().fold(0.0, f64::max),
        worst_channel: worst,
        worst_channel_max_abs: cmax[worst],
        worst_channel_limit: limit[worst],
        worst_channel_f16_noise: None,
        pass,
    };
    (stats, checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<[f32; 6]> {
        vec![
            [0.5, 0.5, 0.2, 0.2, 0.9, 0.0],
            [0.3, 0.6, 0.1, 0.3, 0.8, 1.0],
            [0.7, 0.2, 0.4, 0.1, 0.8, 0.0],
            [0.1, 0.1, 0.1, 0.1, 0.3, 1.0],
        ]
    }

    fn flat(r: &[[f32; 6]]) -> Vec<f32> {
        r.iter().flatten().copied().collect()
    }

    fn check(got: &[[f32; 6]], want: &[[f32; 6]]) -> (OutputStats, Vec<TaskCheck>) {
        let shape = [1, want.len(), 6];
        compare_rows("output0", &shape, &flat(got), &flat(want), Tolerance::F32)
    }

    #[test]
    fn reordered_rows_pass() {
        let want = rows();
        let mut got = rows();
        got.swap(1, 2); // a tie at 0.8 broken the other way
        let (s, c) = check(&got, &want);
        assert!(s.pass && c[0].pass, "{}", c[0].detail);
        assert_eq!(s.max_abs, 0.0);
    }

    #[test]
    fn a_wrong_row_fails() {
        let want = rows();
        let mut got = rows();
        got[1][0] += 0.01; // one box moved by 1 % of the image
        let (s, c) = check(&got, &want);
        assert!(!s.pass && !c[0].pass);
        assert!(c[0].detail.contains("ONNX row [0.31"), "{}", c[0].detail);
        let mut got = rows();
        got[0][5] = 1.0; // right box and score, wrong class
        assert!(!check(&got, &want).0.pass);
    }

    #[test]
    fn only_a_row_at_the_cut_may_go_unmatched() {
        let want = rows();
        let mut got = rows();
        // The last kept row swapped for another box of nearly the same score: a tie at the cut.
        got[3] = [0.9, 0.9, 0.1, 0.1, 0.300_05, 0.0];
        let (s, c) = check(&got, &want);
        assert!(s.pass, "{}", c[0].detail);
        assert!(c[0].detail.contains("1 unmatched"), "{}", c[0].detail);
        // The same swap well above the cut is a disagreement.
        let mut got = rows();
        got[1] = [0.9, 0.9, 0.1, 0.1, 0.8, 1.0];
        assert!(!check(&got, &want).0.pass);
    }
}
