//! Query selection near-ties (RT-DETR). The decoder attends among the k queries the encoder
//! selected by score, so where the k-th and (k+1)-th scores are closer than two runtimes compute
//! them, the ONNX may select one query the interpreter left out, and every output row then moves
//! (held-out rtdetr-l, seed 1000: encoder scores 8.1e-5 apart where ONNX Runtime, PyTorch and the
//! interpreter differ by up to 8e-4; 26 of 300 rows unmatched). When an image's rows fail, the
//! interpreter decodes again with each swap at its cut that the tolerance cannot order — scores
//! within twice the per-channel limit `atol + rtol · max |score|` of each other, closest first,
//! at most [`MAX_SWAPS`] — and the image passes if the ONNX matches one of those outputs under
//! the unchanged row tolerance. The report names the swap (docs/parity.md, "Query selection").

use serde::Serialize;

use super::rows::{RowsTolerance, detection_sets};
use super::{TaskCheck, Tolerance};
use crate::reference::ops::RefTensor;
use crate::reference::selection::{QuerySelection, Swap, near_ties};

/// Most swaps decoded per failing image: each is one decoder run; a real near-tie is a single
/// swap of the closest pair, and more chances would only give a wrong model more tries.
pub const MAX_SWAPS: usize = 8;

/// What the near-tie retry did for one image whose rows failed with the interpreter's own
/// selection.
#[derive(Clone, Debug, Serialize)]
pub struct Reselection {
    /// The seeded batch (its seed), 0 for an image.
    pub batch: usize,
    /// The image in the batch.
    pub image: usize,
    /// Queries selected (k).
    pub k: usize,
    /// The interpreter's k-th minus (k+1)-th selection score.
    pub cut_gap: f64,
    /// Swaps within this of each other were tried: 2 · (atol + rtol · max |score|).
    pub margin: f64,
    /// How many swaps were decoded.
    pub tried: usize,
    /// The swap whose output the ONNX matched, if any: the image then passed.
    pub accepted: Option<Swap>,
    /// The image's row check with the interpreter's own selection, in short: the row counts and
    /// how many rows found no match.
    pub own_selection: String,
}

impl Reselection {
    /// One line for the text report.
    pub fn describe(&self) -> String {
        let at = format!("batch {} image {}", self.batch, self.image);
        match &self.accepted {
            Some(s) => format!(
                "{at}: rows compared with the interpreter's query {} (encoder score {:.6}) swapped for {} ({:.6}), {:.1e} apart, within the selection margin {:.1e} = 2·(atol + rtol·max |score|) — a near-tie at the top-{} cut (with its own selection: {})",
                s.dropped,
                s.dropped_score,
                s.taken,
                s.taken_score,
                s.gap(),
                self.margin,
                self.k,
                self.own_selection
            ),
            None if self.tried == 0 => format!(
                "{at}: no near-tie at the top-{} query cut (scores {:.1e} apart, margin {:.1e}): no other selection tried",
                self.k, self.cut_gap, self.margin
            ),
            None => format!(
                "{at}: none of the {} query swaps within the selection margin {:.1e} at the top-{} cut matched either",
                self.tried, self.margin, self.k
            ),
        }
    }
}

/// The k-th minus the (k+1)-th score of a selection (infinity when nothing was left out).
fn cut_gap(sel: &QuerySelection) -> f64 {
    let mut chosen = vec![false; sel.scores.len()];
    for &q in &sel.chosen {
        if let Some(c) = chosen.get_mut(q) {
            *c = true;
        }
    }
    let floor = sel
        .chosen
        .iter()
        .filter_map(|&q| sel.scores.get(q))
        .fold(f32::INFINITY, |m, &v| m.min(v));
    let ceiling = (0..sel.scores.len())
        .filter(|&q| !chosen[q] && sel.scores[q].is_finite())
        .fold(f32::NEG_INFINITY, |m, q| m.max(sel.scores[q]));
    floor as f64 - ceiling as f64
}

/// For each failed row check of this batch whose image has a kept selection, decodes the
/// near-tie swaps and, where the ONNX (`got`) matches one, puts that output into `want` in place
/// of the image's rows. Returns what was done for each such image; the caller compares again.
pub(super) fn retry(
    batch: usize,
    got: &RefTensor,
    want: &mut RefTensor,
    checks: &[TaskCheck],
    selections: &[QuerySelection],
    (tol, rt): (Tolerance, RowsTolerance),
) -> Vec<Reselection> {
    let [_, k, c] = want.shape[..] else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for check in checks.iter().filter(|t| !t.pass) {
        let Some(sel) = selections.iter().find(|s| s.image == check.image) else {
            continue;
        };
        let margin = 2.0 * (tol.atol + tol.rtol * sel.score_peak());
        let swaps = near_ties(&sel.scores, &sel.chosen, margin, MAX_SWAPS);
        let span = check.image * k * c..(check.image + 1) * k * c;
        let mut accepted = None;
        for &swap in &swaps {
            let rows = sel.decode_with(swap);
            if rows.len() != span.len() {
                continue;
            }
            let mut trial = want.data.clone();
            trial[span.clone()].copy_from_slice(&rows);
            let (_, t) = detection_sets("output0", &want.shape, &got.data, &trial, rt);
            if t.get(check.image).is_some_and(|t| t.pass) {
                want.data = trial;
                accepted = Some(swap);
                break;
            }
        }
        done.push(Reselection {
            batch,
            image: check.image,
            k: sel.chosen.len(),
            cut_gap: cut_gap(sel),
            margin,
            tried: swaps.len(),
            accepted,
            own_selection: in_short(&check.detail),
        });
    }
    done
}

/// A failed row check's counts (`300 vs 300 rows, 274 matched`) and its number of unmatched
/// rows, without the list of them.
fn in_short(detail: &str) -> String {
    let counts = detail.split(';').next().unwrap_or(detail);
    let unmatched = detail.matches("has no match").count();
    format!("{counts}, {unmatched} unmatched")
}

/// Adds each retry's outcome to its image's check, so the text and JSON say how it passed or
/// that the retry did not help.
pub(super) fn annotate(checks: &mut [TaskCheck], done: &[Reselection]) {
    for r in done {
        if let Some(t) = checks.iter_mut().find(|t| t.image == r.image) {
            t.detail = match &r.accepted {
                Some(s) => format!(
                    "{} — with the decoder's query selection swapped at a near-tie ({} for {}, encoder scores {:.1e} apart, margin {:.1e})",
                    t.detail,
                    s.taken,
                    s.dropped,
                    s.gap(),
                    r.margin
                ),
                None => format!("{}; {}", t.detail, r.describe()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows that depend on the whole selection, as a decoder's do: each query's row carries the
    /// sum of the selected indices in its score (and its own index, so the rows are ranked).
    fn decode(sel: &[usize]) -> Vec<f32> {
        let mix: usize = sel.iter().sum();
        sel.iter()
            .flat_map(|&q| {
                let c = 0.1 + 0.2 * q as f32;
                [
                    c,
                    c,
                    0.05,
                    0.05,
                    0.3 + 0.1 * q as f32 + 0.01 * mix as f32,
                    0.0,
                ]
            })
            .collect()
    }

    fn case(onnx: &[usize]) -> (Vec<Reselection>, RefTensor) {
        // Queries 1 and 2 tie to 5e-4, within the margin 2·(1e-4 + 1e-3·0.9); query 3 is far.
        let scores = vec![0.9, 0.5, 0.4995, 0.1];
        let sel = QuerySelection::new(0, scores, vec![0, 1], decode);
        let got = RefTensor::new(decode(onnx), vec![1, 2, 6]);
        let mut want = RefTensor::new(decode(&[0, 1]), vec![1, 2, 6]);
        let rt = RowsTolerance::top_k(Tolerance::F32);
        let (_, checks) = detection_sets("output0", &want.shape, &got.data, &want.data, rt);
        assert!(
            !checks[0].pass,
            "the selections differ: {}",
            checks[0].detail
        );
        let done = retry(3, &got, &mut want, &checks, &[sel], (Tolerance::F32, rt));
        (done, want)
    }

    #[test]
    fn a_swap_at_a_near_tie_is_found_and_reported() {
        let (done, want) = case(&[0, 2]);
        assert_eq!(done.len(), 1);
        let r = &done[0];
        assert_eq!((r.batch, r.image, r.k, r.tried), (3, 0, 2, 1));
        let s = r.accepted.expect("the swap 1 → 2 matches the ONNX");
        assert_eq!((s.dropped, s.taken), (1, 2));
        assert!((r.cut_gap - 5e-4).abs() < 1e-6 && (r.margin - 2.0e-3).abs() < 1e-6);
        assert_eq!(r.own_selection, "2 vs 2 rows, 0 matched, 4 unmatched");
        assert_eq!(
            want.data,
            decode(&[0, 2]),
            "the reference rows are the swap's"
        );
        assert!(
            r.describe()
                .contains("query 1 (encoder score 0.500000) swapped for 2")
        );
    }

    #[test]
    fn a_selection_beyond_the_margin_is_not_excused() {
        let (done, want) = case(&[0, 3]);
        assert_eq!(done.len(), 1);
        assert!(done[0].accepted.is_none() && done[0].tried == 1, "{done:?}");
        assert_eq!(want.data, decode(&[0, 1]), "the reference rows stay");
        let mut checks = vec![TaskCheck {
            kind: "detection rows",
            image: 0,
            pass: false,
            detail: "2 vs 2 rows, 0 matched; …".into(),
        }];
        annotate(&mut checks, &done);
        assert!(
            checks[0]
                .detail
                .ends_with("none of the 1 query swaps within the selection margin 2.0e-3 at the top-2 cut matched either"),
            "{}",
            checks[0].detail
        );
    }
}
