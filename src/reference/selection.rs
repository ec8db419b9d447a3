//! A top-k selection inside a model (RT-DETR's encoder picks the decoder's queries by score),
//! kept so the run after it can be repeated with another choice. Parity needs this: where the
//! k-th and (k+1)-th scores are closer than two runtimes' rounding, the two sides may select
//! different queries, and a decoder whose queries attend to one another then moves every output
//! (docs/parity.md, "Query selection").

use std::sync::Arc;

/// The decoder run after the selection, for one batch item: its output rows for a list of
/// selected candidates.
type Decode = dyn Fn(&[usize]) -> Vec<f32> + Send + Sync;

/// One batch item's top-k selection, with what is needed to decode another.
#[derive(Clone)]
pub struct QuerySelection {
    /// The batch item.
    pub image: usize,
    /// Every candidate's selection score (RT-DETR: the encoder's best class logit per anchor).
    pub scores: Vec<f32>,
    /// The candidates the interpreter selected, best first (the top k, ties by index).
    pub chosen: Vec<usize>,
    decode: Arc<Decode>,
}

impl std::fmt::Debug for QuerySelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuerySelection")
            .field("image", &self.image)
            .field("candidates", &self.scores.len())
            .field("chosen", &self.chosen.len())
            .finish()
    }
}

/// Replacing one selected candidate by one left out.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Swap {
    /// The selected candidate left out.
    pub dropped: usize,
    /// Its score.
    pub dropped_score: f32,
    /// The candidate taken in its place.
    pub taken: usize,
    /// Its score.
    pub taken_score: f32,
}

impl Swap {
    /// How far apart the two scores are (≥ 0 for a swap [`near_ties`] returns).
    pub fn gap(&self) -> f64 {
        self.dropped_score as f64 - self.taken_score as f64
    }
}

impl QuerySelection {
    /// Wraps the selection `chosen` of `scores` for batch item `image`; `decode` runs the rest
    /// of the model on another selection and returns that item's output.
    pub(crate) fn new(
        image: usize,
        scores: Vec<f32>,
        chosen: Vec<usize>,
        decode: impl Fn(&[usize]) -> Vec<f32> + Send + Sync + 'static,
    ) -> QuerySelection {
        QuerySelection {
            image,
            scores,
            chosen,
            decode: Arc::new(decode),
        }
    }

    /// The item's output (the same layout as its slice of the model's output) with `swap`
    /// applied to the selection: the chosen order kept, the dropped candidate's place taken.
    pub fn decode_with(&self, swap: Swap) -> Vec<f32> {
        let chosen: Vec<usize> = self
            .chosen
            .iter()
            .map(|&q| if q == swap.dropped { swap.taken } else { q })
            .collect();
        (self.decode)(&chosen)
    }

    /// The largest |score|, the scale of the selection scores.
    pub fn score_peak(&self) -> f64 {
        self.scores
            .iter()
            .filter(|v| v.is_finite())
            .fold(0f64, |m, &v| m.max((v as f64).abs()))
    }
}

/// The swaps of one selected for one left-out candidate whose scores lie within `margin` of each
/// other, closest first, at most `max`: the selections that scores each moved by up to
/// `margin / 2` could have made instead. Non-finite scores never take part.
pub fn near_ties(scores: &[f32], chosen: &[usize], margin: f64, max: usize) -> Vec<Swap> {
    let mut selected = vec![false; scores.len()];
    for &q in chosen {
        if let Some(s) = selected.get_mut(q) {
            *s = true;
        }
    }
    let finite = |q: &usize| scores.get(*q).is_some_and(|v| v.is_finite());
    let ins: Vec<usize> = chosen.iter().copied().filter(finite).collect();
    let Some(floor) = ins.iter().map(|&q| scores[q]).reduce(f32::min) else {
        return Vec::new();
    };
    // Only candidates near the cut can pair: a selected one within `margin` of the best left-out
    // score, a left-out one within `margin` of the lowest selected score.
    let outs: Vec<usize> = (0..scores.len())
        .filter(|q| !selected[*q] && finite(q))
        .filter(|&q| floor as f64 - scores[q] as f64 <= margin)
        .collect();
    let Some(ceiling) = outs.iter().map(|&q| scores[q]).reduce(f32::max) else {
        return Vec::new();
    };
    let mut swaps: Vec<Swap> = ins
        .iter()
        .filter(|&&q| scores[q] as f64 - ceiling as f64 <= margin)
        .flat_map(|&i| {
            outs.iter().map(move |&j| Swap {
                dropped: i,
                dropped_score: scores[i],
                taken: j,
                taken_score: scores[j],
            })
        })
        .filter(|s| s.gap() <= margin)
        .collect();
    swaps.sort_by(|a, b| {
        a.gap()
            .total_cmp(&b.gap())
            .then(a.dropped.cmp(&b.dropped))
            .then(a.taken.cmp(&b.taken))
    });
    swaps.truncate(max);
    swaps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_ties_pair_the_cut_closest_first() {
        // Top 3 of [0.9, 0.5, 0.41, 0.8, 0.4, 0.1]: 0, 3, 1 selected; 2 and 4 just below.
        let scores = [0.9, 0.5, 0.41, 0.8, 0.4, 0.1];
        let chosen = [0, 3, 1];
        let s = near_ties(&scores, &chosen, 0.15, 8);
        let pairs: Vec<(usize, usize)> = s.iter().map(|s| (s.dropped, s.taken)).collect();
        assert_eq!(pairs, vec![(1, 2), (1, 4)]);
        assert!((s[0].gap() - 0.09).abs() < 1e-6);
        // A clear cut has none; a cap keeps the closest.
        assert!(near_ties(&scores, &chosen, 0.05, 8).is_empty());
        assert_eq!(near_ties(&scores, &chosen, 0.5, 1).len(), 1);
        let wide = near_ties(&scores, &chosen, 0.5, 8);
        assert!(
            wide.iter().all(|s| s.gap() >= 0.0 && s.gap() <= 0.5),
            "{wide:?}"
        );
        assert!(wide.iter().any(|s| (s.dropped, s.taken) == (3, 2)));
    }

    #[test]
    fn near_ties_ignore_non_finite_and_full_selections() {
        let scores = [0.5, f32::NAN, 0.49, f32::NEG_INFINITY];
        assert_eq!(near_ties(&scores, &[0], 1.0, 8).len(), 1);
        assert!(near_ties(&scores, &[0, 1, 2, 3], 1.0, 8).is_empty());
        assert!(near_ties(&[], &[], 1.0, 8).is_empty());
    }

    #[test]
    fn a_swap_replaces_one_query_in_place() {
        let sel = QuerySelection::new(0, vec![3.0, 2.0, 1.0], vec![0, 1], |c: &[usize]| {
            c.iter().map(|&q| q as f32).collect()
        });
        let swap = Swap {
            dropped: 0,
            dropped_score: 3.0,
            taken: 2,
            taken_score: 1.0,
        };
        assert_eq!(sel.decode_with(swap), vec![2.0, 1.0]);
        assert_eq!(sel.score_peak(), 3.0);
    }
}
