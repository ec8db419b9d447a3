//! End-to-end (one-to-one) post-processing, as Ultralytics' `Detect.postprocess` does it at
//! export: of a (B, 4 + nc + extra, anchors) head output, keep the k = min(max_det, anchors)
//! anchors with the best class score, then the k best (anchor, class) scores among them, and
//! give each as a row: its box, the score, the class index (as a float) and the anchor's extra
//! channels. Both sides take the class-aware selection (`agnostic_nms` is off at export).

use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::Builder;
use crate::reference::ops::RefTensor;

impl Builder<'_> {
    /// The top-k rows of head output `y` (B, 4 + nc + extra, anchors) in the graph: `TopK` twice,
    /// `GatherElements` for the rows (B, k, 6 + extra).
    pub(crate) fn end2end_rows(
        &mut self,
        scope: &str,
        y: &GraphValue,
        nc: i64,
        max_det: usize,
    ) -> BuildResult<GraphValue> {
        let [batch, c, a] = y.shape[..] else {
            return Err(LayerError::shape(
                scope,
                format!("head output {:?} is not 3-D", y.shape),
            ));
        };
        let extra = c - 4 - nc;
        if extra < 0 || a < 1 {
            return Err(LayerError::shape(
                scope,
                format!("head output {:?} for {nc} classes", y.shape),
            ));
        }
        let k = i64::try_from(max_det).unwrap_or(i64::MAX).min(a);
        let s = &format!("{scope}.postprocess");
        let p = self.b.node(
            s,
            "Transpose",
            &[&y.name],
            vec![("perm", Attr::Ints(vec![0, 2, 1]))],
        );
        let sizes: Vec<i64> = [4, nc, extra].into_iter().filter(|&n| n > 0).collect();
        let parts = self.b.split(s, &p, 2, &sizes);
        let scores = &parts[1];
        let topk = |b: &mut Self, x: &str, k: i64, axis: i64| {
            let kk = b.b.ints(&format!("{s}/k"), &[k]);
            let out =
                b.b.node_n(s, "TopK", &[x, &kk], 2, vec![("axis", Attr::Int(axis))]);
            (out[0].clone(), out[1].clone())
        };
        // Each anchor's best class score; the k anchors with the best.
        let (best, _) = topk(self, scores, 1, 2);
        // (B, anchors): -1, so a graph with anchors computed at run time takes it as is.
        let best = self.b.reshape(s, &best, &[0, -1]);
        let (_, anchors) = topk(self, &best, k, 1);
        let anchors = self.b.reshape(s, &anchors, &[0, k, 1]);
        let gather = |b: &mut Self, x: &str, index: &str, width: i64| {
            let w = b.b.ints(&format!("{s}/expand"), &[1, 1, width]);
            let idx = b.b.node(s, "Expand", &[index, &w], vec![]);
            b.b.node(
                s,
                "GatherElements",
                &[x, &idx],
                vec![("axis", Attr::Int(1))],
            )
        };
        // Their class scores, flattened; the k best (anchor, class) pairs.
        let kept = gather(self, scores, &anchors, nc);
        let flat = self.b.reshape(s, &kept, &[0, k * nc]);
        let (score, pick) = topk(self, &flat, k, 1);
        let classes = self.b.ints(&format!("{s}/nc"), &[nc]);
        let label = self.b.bin(s, "Mod", &pick, &classes);
        let label = self.b.node(
            s,
            "Cast",
            &[&label],
            vec![("to", Attr::Int(self.b.dtype as i64))],
        );
        let slot = self.b.bin(s, "Div", &pick, &classes);
        let anchors = self.b.reshape(s, &anchors, &[0, k]);
        let anchor = self.b.node(
            s,
            "GatherElements",
            &[&anchors, &slot],
            vec![("axis", Attr::Int(1))],
        );
        let anchor = self.b.reshape(s, &anchor, &[0, k, 1]);
        let mut cols = vec![gather(self, &parts[0], &anchor, 4)];
        cols.push(self.b.reshape(s, &score, &[0, k, 1]));
        cols.push(self.b.reshape(s, &label, &[0, k, 1]));
        if extra > 0 {
            cols.push(gather(self, &parts[2], &anchor, extra));
        }
        let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
        Ok(GraphValue {
            name: self.b.concat(s, &refs, 2),
            shape: vec![batch, k, 6 + extra],
        })
    }
}

/// The top-k rows of head output `y` (B, 4 + nc + extra, anchors), by sorting: anchors by their
/// best class score, then the (anchor, class) scores of the k kept. Ties keep the lower index
/// first (a runtime's `TopK` may order them otherwise; parity compares rows as sets).
pub(super) fn rows(y: &RefTensor, nc: usize, max_det: usize) -> RefTensor {
    let (n, c, a) = (y.shape[0], y.shape[1], y.shape[2]);
    let extra = c.saturating_sub(4 + nc);
    let k = max_det.min(a);
    let at = |b: usize, r: usize, j: usize| y.data[(b * c + r) * a + j];
    let mut out = Vec::with_capacity(n * k * (6 + extra));
    for b in 0..n {
        let best: Vec<f32> = (0..a)
            .map(|j| {
                (0..nc)
                    .map(|q| at(b, 4 + q, j))
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect();
        let mut order: Vec<usize> = (0..a).collect();
        order.sort_by(|&p, &q| best[q].total_cmp(&best[p]).then(p.cmp(&q)));
        order.truncate(k);
        let mut pairs: Vec<(f32, usize, usize)> = order
            .iter()
            .flat_map(|&j| (0..nc).map(move |q| (at(b, 4 + q, j), j, q)))
            .collect();
        pairs.sort_by(|p, q| q.0.total_cmp(&p.0));
        pairs.truncate(k);
        for (score, j, q) in pairs {
            out.extend((0..4).map(|r| at(b, r, j)));
            out.push(score);
            out.push(q as f32);
            out.extend((0..extra).map(|r| at(b, 4 + nc + r, j)));
        }
    }
    RefTensor::new(out, vec![n, k, 6 + extra])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (1, 4 + 2 + 1, 3): anchor j has box (j, j, j, j), scores and one extra channel.
    fn head(scores: [[f32; 2]; 3]) -> RefTensor {
        let a = 3;
        let mut d = vec![0f32; 7 * a];
        for j in 0..a {
            for r in 0..4 {
                d[r * a + j] = j as f32;
            }
            d[4 * a + j] = scores[j][0];
            d[5 * a + j] = scores[j][1];
            d[6 * a + j] = 10.0 + j as f32;
        }
        RefTensor::new(d, vec![1, 7, a])
    }

    #[test]
    fn rows_take_the_best_anchors_then_the_best_pairs() {
        // Anchor 1's two classes both beat anchor 2's best: k = 2 keeps anchors 1 and 0 first,
        // then anchor 1 class 0 (0.9) and anchor 1 class 1 (0.8).
        let y = rows(&head([[0.7, 0.1], [0.9, 0.8], [0.2, 0.3]]), 2, 2);
        assert_eq!(y.shape, vec![1, 2, 7]);
        assert_eq!(&y.data[..7], &[1.0, 1.0, 1.0, 1.0, 0.9, 0.0, 11.0]);
        assert_eq!(&y.data[7..], &[1.0, 1.0, 1.0, 1.0, 0.8, 1.0, 11.0]);
    }

    #[test]
    fn max_det_is_clamped_to_the_anchors() {
        let y = rows(&head([[0.7, 0.1], [0.9, 0.8], [0.2, 0.3]]), 2, 300);
        assert_eq!(y.shape, vec![1, 3, 7]);
        // Scores descend.
        let s: Vec<f32> = (0..3).map(|r| y.data[r * 7 + 4]).collect();
        assert_eq!(s, vec![0.9, 0.8, 0.7]);
    }
}
