//! Parity of a class map (`SemanticSegment`'s (B, H, W) labels): labels are compared exactly,
//! except at pixels where the reference's own logits make the label a near-tie. A difference of
//! numbers cannot be measured on labels, so the margin between the two classes' logits stands in
//! for it: a pixel may take the other label only where its two logits are within what the
//! per-channel tolerance allows each of them to move (docs/parity.md).

use super::{OutputStats, Tolerance};

/// Compares the class maps `got` and `want` (shape (B, H, W), labels as f32) with `logits`, the
/// reference's resized logits (B, nc, H, W) behind `want`. With one class the map is
/// `logit > 0`, so the margin is |logit|. Without logits every label must match.
///
/// In the statistics, `max_abs` is the largest logit margin at a differing pixel (infinite where
/// a label differs without logits to judge it, or is no class at all), `mean_abs` the fraction
/// of differing pixels, and the worst channel is the reference class of the pixel nearest to or
/// furthest over its limit.
pub fn compare_labels(
    name: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    logits: Option<&[f32]>,
    tol: Tolerance,
) -> OutputStats {
    let pixels = want.len();
    let batch = shape.first().copied().unwrap_or(1).max(1);
    let plane = pixels / batch;
    let nc = logits.map_or(0, |l| l.len() / pixels.max(1));
    let logits = logits.filter(|l| nc >= 1 && l.len() == nc * pixels);
    // Per class: atol + rtol · max |logit| of that class, as for any output channel.
    let limit: Vec<f64> = (0..nc)
        .map(|k| {
            let peak = logits.map_or(0.0, |l| {
                (0..batch)
                    .flat_map(|b| l[(b * nc + k) * plane..(b * nc + k + 1) * plane].iter())
                    .fold(0f64, |m, &v| m.max((v as f64).abs()))
            });
            tol.atol + tol.rtol * peak
        })
        .collect();
    let (mut differ, mut max_margin, mut worst, mut worst_ratio, mut pass) =
        (0usize, 0f64, 0usize, 0f64, got.len() == want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g == w {
            continue;
        }
        differ += 1;
        let (b, p) = (i / plane.max(1), i % plane.max(1));
        let label = |v: f32| (v >= 0.0 && v.fract() == 0.0).then_some(v as usize);
        // (margin, allowance, reference class) when the logits can judge this pixel.
        let at = |l: &[f32], k: usize| l.get((b * nc + k) * plane + p).map(|&v| v as f64);
        let judged = match (logits, label(g), label(w)) {
            (Some(l), Some(gc), Some(wc)) if nc == 1 && gc <= 1 && wc <= 1 => {
                at(l, 0).map(|v| (v.abs(), limit[0], 0))
            }
            (Some(l), Some(gc), Some(wc)) if gc < nc && wc < nc => {
                // Each logit may move by its own class's limit: the order flips within the sum.
                at(l, wc)
                    .zip(at(l, gc))
                    .map(|(a, b)| ((a - b).abs(), limit[wc] + limit[gc], wc))
            }
            _ => None,
        };
        let (margin, allow, class) = judged.unwrap_or((f64::INFINITY, 0.0, 0));
        max_margin = max_margin.max(margin);
        let ratio = if allow > 0.0 {
            margin / allow
        } else {
            f64::INFINITY
        };
        if ratio > 1.0 {
            pass = false;
        }
        if ratio >= worst_ratio {
            worst_ratio = ratio;
            worst = class;
        }
    }
    let same = pixels.saturating_sub(differ) as f64;
    OutputStats {
        name: name.to_string(),
        shape: shape.to_vec(),
        max_abs: max_margin,
        max_rel: 0.0,
        mean_abs: differ as f64 / pixels.max(1) as f64,
        cosine: if pixels == 0 {
            1.0
        } else {
            same / pixels as f64
        },
        reference_max: 0.0,
        worst_channel: worst,
        worst_channel_max_abs: max_margin,
        worst_channel_limit: limit.get(worst).copied().unwrap_or(tol.atol),
        worst_channel_f16_noise: None,
        pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 criterion with a tighter relative part, so the near-tie below is the only one.
    const TOL: Tolerance = Tolerance {
        rtol: 1e-4,
        ..Tolerance::F32
    };

    /// One image of four pixels, two classes.
    fn logits() -> Vec<f32> {
        // class 0 plane, then class 1 plane; pixel 1 is a near-tie (2.0 vs 2.00001).
        vec![5.0, 2.0, -1.0, 0.0, 1.0, 2.00001, 3.0, -4.0]
    }

    #[test]
    fn equal_maps_pass() {
        let want = [0.0, 1.0, 1.0, 0.0];
        let s = compare_labels("y", &[1, 2, 2], &want, &want, Some(&logits()), TOL);
        assert!(s.pass && s.mean_abs == 0.0);
    }

    #[test]
    fn a_flip_passes_only_at_a_near_tie() {
        let want = [0.0, 1.0, 1.0, 0.0];
        let tie = [0.0, 0.0, 1.0, 0.0];
        assert!(compare_labels("y", &[1, 2, 2], &tie, &want, Some(&logits()), TOL).pass);
        let wrong = [0.0, 1.0, 0.0, 0.0];
        let s = compare_labels("y", &[1, 2, 2], &wrong, &want, Some(&logits()), TOL);
        assert!(!s.pass);
        assert!((s.max_abs - 4.0).abs() < 1e-6);
        assert_eq!(s.worst_channel, 1);
    }

    #[test]
    fn without_logits_every_label_must_match() {
        let want = [0.0, 1.0, 1.0, 0.0];
        let tie = [0.0, 0.0, 1.0, 0.0];
        assert!(!compare_labels("y", &[1, 2, 2], &tie, &want, None, TOL).pass);
    }

    #[test]
    fn a_label_beyond_the_classes_fails() {
        let want = [0.0, 1.0, 1.0, 0.0];
        let bad = [0.0, 7.0, 1.0, 0.0];
        assert!(!compare_labels("y", &[1, 2, 2], &bad, &want, Some(&logits()), TOL).pass);
    }

    #[test]
    fn one_class_maps_use_the_sign_of_the_logit() {
        let l = [0.00001, -3.0];
        let want = [1.0, 0.0];
        assert!(compare_labels("y", &[1, 1, 2], &[0.0, 0.0], &want, Some(&l), TOL).pass);
        assert!(!compare_labels("y", &[1, 1, 2], &[1.0, 1.0], &want, Some(&l), TOL).pass);
    }
}
