//! The per-channel comparison: for each channel of an output, max |Δ| ≤ atol + rtol · max
//! |reference| over that channel (plus, for f16 models, a multiple of the channel's emulated f16
//! noise). Channels are dimension 1 of (B, C, …) outputs — each class of a (B, nc)
//! classification output — and the last dimension of the classic YOLOv5/YOLOv7 rows
//! (B, anchors, 5 + nc).

use super::{OutputStats, Tolerance};

/// Compares two same-shaped outputs, channel by channel (dimension 1; the whole output when it
/// has one dimension).
pub fn compare(
    name: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    tol: Tolerance,
) -> OutputStats {
    compare_f16(name, shape, got, want, None, tol)
}

/// [`compare`], with `emulated` (the f16-rounding reference's output, same shape) giving each
/// channel's f16 noise when the tolerance allows for it.
pub fn compare_f16(
    name: &str,
    shape: &[usize],
    got: &[f32],
    want: &[f32],
    emulated: Option<&[f32]>,
    tol: Tolerance,
) -> OutputStats {
    compare_along(name, shape, 1, got, want, emulated, tol)
}

/// The dimension that holds an output's channels for `task`: the last one for the anchor-based
/// heads of classic YOLOv5/YOLOv7, whose rows are (B, anchors, 5 + nc) — comparing along
/// dimension 1 there would make every anchor a "channel" whose limit its box coordinates set,
/// and hide the scores — and dimension 1 (B, C, …) for everything else.
pub fn channel_axis(task: &str, shape: &[usize]) -> usize {
    if task == crate::models::foreign::CLASSIC_TASK && shape.len() == 3 {
        2
    } else {
        1
    }
}

/// How element `i` maps to a channel along `axis`: (channel count, elements per channel step).
/// A (B, nc) classification output has a channel per class: as one channel, every class's
/// limit was set by the largest probability, and a small class's probability could drop by
/// most of itself unseen (review 6). Outputs of one dimension are one channel; never zero
/// channels (an empty output still gets one, so the worst channel is always defined).
fn channel_layout(shape: &[usize], axis: usize, len: usize) -> (usize, usize) {
    if shape.len() >= 2 && axis < shape.len() {
        (
            shape[axis].max(1),
            shape[axis + 1..].iter().product::<usize>().max(1),
        )
    } else {
        (1, len.max(1))
    }
}

/// [`compare_f16`] with the channels along dimension `axis` (see [`channel_axis`]).
pub fn compare_along(
    name: &str,
    shape: &[usize],
    axis: usize,
    got: &[f32],
    want: &[f32],
    emulated: Option<&[f32]>,
    tol: Tolerance,
) -> OutputStats {
    let (mut max_abs, mut max_rel, mut sum, mut dot, mut gg, mut ww, mut rmax) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    let mut nan = got.len() != want.len();
    let (channels, inner) = channel_layout(shape, axis, got.len());
    let (mut cmax, mut cref) = (vec![0f64; channels], vec![0f64; channels]);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let d = (g - w).abs();
        nan |= d.is_nan();
        let c = (i / inner) % channels;
        cmax[c] = cmax[c].max(d);
        cref[c] = cref[c].max(w.abs());
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / (w.abs() + 1e-6));
        sum += d;
        dot += g * w;
        gg += g * g;
        ww += w * w;
        rmax = rmax.max(w.abs());
    }
    let emulated = emulated.filter(|e| e.len() == want.len() && tol.f16_noise.is_some());
    let noise = match emulated {
        Some(e) => channel_noise_along(shape, axis, e, want),
        None => vec![0f64; channels],
    };
    let factor = tol.f16_noise.unwrap_or(0.0);
    let limit = |c: usize| tol.atol + tol.rtol * cref[c] + factor * noise[c];
    let worst = (0..channels)
        .max_by(|&a, &b| (cmax[a] / limit(a)).total_cmp(&(cmax[b] / limit(b))))
        .unwrap_or(0);
    let cosine = if gg > 0.0 && ww > 0.0 {
        dot / (gg.sqrt() * ww.sqrt())
    } else if gg == ww {
        1.0
    } else {
        0.0
    };
    let pass = !nan && (0..channels).all(|c| cmax[c] <= limit(c));
    OutputStats {
        name: name.to_string(),
        shape: shape.to_vec(),
        max_abs: if nan { f64::NAN } else { max_abs },
        max_rel,
        mean_abs: sum / got.len().max(1) as f64,
        cosine,
        reference_max: rmax,
        worst_channel: worst,
        worst_channel_max_abs: cmax.get(worst).copied().unwrap_or(0.0),
        worst_channel_limit: limit(worst),
        worst_channel_f16_noise: emulated.map(|_| noise.get(worst).copied().unwrap_or(0.0)),
        pass,
    }
}

/// Per channel (dimension 1, as in [`compare`]): max |emulated − exact|, the f16 rounding noise.
/// Non-finite differences (the emulation overflowing f16) count as no noise: they widen nothing.
pub fn channel_noise(shape: &[usize], emulated: &[f32], exact: &[f32]) -> Vec<f64> {
    channel_noise_along(shape, 1, emulated, exact)
}

/// [`channel_noise`] with the channels along dimension `axis`.
fn channel_noise_along(shape: &[usize], axis: usize, emulated: &[f32], exact: &[f32]) -> Vec<f64> {
    let (channels, inner) = channel_layout(shape, axis, exact.len());
    let mut noise = vec![0f64; channels];
    for (i, (&x, &w)) in emulated.iter().zip(exact).enumerate() {
        let d = (x as f64 - w as f64).abs();
        if d.is_finite() {
            let c = (i / inner) % channels;
            noise[c] = noise[c].max(d);
        }
    }
    noise
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 1e-4,
        f16_noise: None,
    };

    /// A (1, 2, 4) output: a box-like channel in the hundreds, a score channel below 0.01.
    fn output() -> Vec<f32> {
        vec![480.0, 320.0, 100.0, 12.0, 0.006, 0.002, 0.004, 0.001]
    }

    #[test]
    fn equal_outputs_pass() {
        let y = output();
        let s = compare("y", &[1, 2, 4], &y, &y, TOL);
        assert!(s.pass);
        assert_eq!(s.max_abs, 0.0);
        assert!((s.cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn an_error_in_a_small_channel_is_not_hidden_by_a_large_one() {
        let want = output();
        let mut got = want.clone();
        // 0.004 is far under 1e-4 · 480 + 1e-4 (the whole-tensor limit), far over the score
        // channel's own 1e-4 · 0.006 + 1e-4.
        got[4] = 0.002;
        let s = compare("y", &[1, 2, 4], &got, &want, TOL);
        assert!(!s.pass);
        assert_eq!(s.worst_channel, 1);
        assert!((s.worst_channel_limit - (1e-4 + 1e-4 * 0.006)).abs() < 1e-9);
        // The same error within the large channel's limit passes.
        let mut got = want.clone();
        got[0] += 0.004;
        assert!(compare("y", &[1, 2, 4], &got, &want, TOL).pass);
    }

    #[test]
    fn channels_are_found_in_every_batch_item() {
        let mut want = output();
        want.extend(output());
        let mut got = want.clone();
        // Second image, score channel.
        got[12] = 0.0;
        let s = compare("y", &[2, 2, 4], &got, &want, TOL);
        assert!(!s.pass);
        assert_eq!(s.worst_channel, 1);
    }

    #[test]
    fn classic_rows_are_compared_per_column_not_per_anchor() {
        // (B, anchors, 5 + nc): two anchors whose boxes are in the hundreds and whose class
        // score (column 5) is lowered by 0.02 in the runtime's output.
        let want = vec![
            300.0, 200.0, 50.0, 40.0, 0.9, 0.8, //
            500.0, 100.0, 60.0, 30.0, 0.7, 0.6,
        ];
        let mut got = want.clone();
        got[5] -= 0.02;
        got[11] -= 0.02;
        let shape = [1, 2, 6];
        // Along dimension 1 each anchor is a "channel" and its box sets the limit: it passes.
        assert!(compare_along("y", &shape, 1, &got, &want, None, TOL).pass);
        let axis = channel_axis(crate::models::foreign::CLASSIC_TASK, &shape);
        assert_eq!(axis, 2);
        let s = compare_along("y", &shape, axis, &got, &want, None, TOL);
        assert!(!s.pass);
        assert_eq!(s.worst_channel, 5);
        assert_eq!(channel_axis("detect", &shape), 1);
    }

    /// Review 6: class probabilities (B, nc) are compared per class, so lowering a small class's
    /// probability by 5e-4 fails, far below the 1e-3 that the largest class would allow.
    #[test]
    fn each_class_of_a_classification_output_is_a_channel() {
        let want = [0.9f32, 0.05, 0.03, 0.02, 0.2, 0.7, 0.05, 0.05];
        assert!(compare("output0", &[2, 4], &want, &want, Tolerance::F32).pass);
        let mut got = want;
        got[3] -= 5e-4;
        let s = compare("output0", &[2, 4], &got, &want, Tolerance::F32);
        assert!(!s.pass, "{s:?}");
        assert_eq!(s.worst_channel, 3);
        // As one channel the limit was 1e-4 + 1e-3 · 0.9: the change passed.
        assert!(compare("output0", &[8], &got, &want, Tolerance::F32).pass);
    }

    #[test]
    fn nan_fails() {
        let want = output();
        let mut got = want.clone();
        got[6] = f32::NAN;
        let s = compare("y", &[1, 2, 4], &got, &want, TOL);
        assert!(!s.pass);
        assert!(s.max_abs.is_nan());
        // A NaN on the reference side too.
        let s = compare("y", &[1, 2, 4], &want, &got, TOL);
        assert!(!s.pass);
    }

    #[test]
    fn a_length_mismatch_fails() {
        let want = output();
        let s = compare("y", &[1, 2, 4], &want[..7], &want, TOL);
        assert!(!s.pass);
    }

    #[test]
    fn f16_noise_widens_only_its_own_channel() {
        let want = output();
        let mut emulated = want.clone();
        emulated[0] += 0.5; // box channel noise 0.5
        let tol = Tolerance {
            f16_noise: Some(2.0),
            ..TOL
        };
        let mut got = want.clone();
        got[1] += 0.9; // within 2 · 0.5 of the noisy channel
        assert!(compare_f16("y", &[1, 2, 4], &got, &want, Some(&emulated), tol).pass);
        got[5] += 0.9; // the score channel has no noise: fails
        let s = compare_f16("y", &[1, 2, 4], &got, &want, Some(&emulated), tol);
        assert!(!s.pass);
        assert_eq!(s.worst_channel, 1);
    }
}
