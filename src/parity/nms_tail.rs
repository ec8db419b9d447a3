//! The NMS tail exercised directly (review 8, G13/G14/G16): seeded images never score above
//! ~0.9, so a tail that drops confident rows (with arithmetic masks or comparisons the
//! structural reader cannot follow) passed the rows check. The ONNX is cut at the head's raw
//! predictions ([`cut`]) and the tail alone runs on synthetic predictions whose scores cover
//! (conf, 1] — 0.95 to 1.0 and exactly 1.0 among them — in clusters of overlapping boxes of
//! several classes; its rows are compared with the reference's NMS on the same predictions.

#[path = "nms_tail_cut.rs"]
mod cut;

use super::{NmsOutput, TaskCheck, Tolerance};
use crate::reference::ops::RefTensor;
use crate::runtime::Engine;

/// What a tail check needs to know of the model.
pub struct TailModel<'a> {
    /// The ONNX's bytes.
    pub bytes: &'a [u8],
    /// The same, parsed.
    pub model: &'a crate::onnx::proto::Model,
    /// The input shape the ONNX is run at (B, 3, H, W).
    pub input: &'a [usize],
    /// The head's strides (anchors per image: Σ (H / s)(W / s)).
    pub strides: &'a [f64],
    /// Task and class count.
    pub task: (&'a str, usize),
    /// Whether the head computes in float16.
    pub half: bool,
    /// The ONNX's directory (its external data files are named relative to it).
    pub dir: Option<&'a std::path::Path>,
}

/// Runs the tail of `m` on synthetic predictions made from `seed` and compares its rows with the
/// reference NMS `nms`: `Ok` with the failed comparisons (empty when the rows agree), `Err` with
/// why the tail cannot be run on its own (the caller refuses the file).
pub fn check(
    rt: &Engine,
    m: &TailModel,
    nms: &NmsOutput,
    tol: Tolerance,
    seed: u64,
) -> Result<Vec<TaskCheck>, String> {
    let (task, nc) = m.task;
    let [b, _, h, w] = m.input[..] else {
        return Err(format!("its input shape {:?} is not B×C×H×W", m.input));
    };
    let width = match m.model.outputs.first().and_then(|o| o.dims.get(2)) {
        Some(crate::onnx::proto::Dim::Fixed(n)) if *n >= 6 => *n as usize,
        _ => return Err("its output0 has no fixed row width".into()),
    };
    let channels = 4 + nc + (width - 6);
    let mut anchors = 0;
    for &s in m.strides {
        let s = s as usize;
        if s == 0 || h % s != 0 || w % s != 0 {
            return Err(format!("its input {h}×{w} is not a multiple of stride {s}"));
        }
        anchors += (h / s) * (w / s);
    }
    let tails = cut::candidates(m.model)?;
    let dims = [b.max(1), channels, anchors];
    let image_name = (m.model.inputs.first()).map_or("images", |i| i.name.as_str());
    let tail = pick(rt, m, tails, &dims, (image_name, seed))?;
    let sub = cut::cut(m.bytes, m.model, &tail, &dims, m.half)?;
    // One set of predictions per image of the batch, each from its own seed.
    let per_image = [1, channels, anchors];
    let data = (0..dims[0] as u64)
        .flat_map(|i| synthetic(&per_image, nms.nms.conf, nc, (h, w), seed.wrapping_add(i)).data)
        .collect();
    let mut raw = RefTensor::new(data, dims.to_vec());
    if m.half {
        // The tail then reads the f16 rounding of what it is given; the reference must too.
        for v in &mut raw.data {
            *v = half::f16::from_f32(*v).to_f32();
        }
    }
    let mut fed = raw.data.clone();
    if corners(m.model, task) {
        let a = anchors;
        for img in fed.chunks_mut(channels * a) {
            for k in 0..a {
                let (cx, cy, bw, bh) = (img[k], img[a + k], img[2 * a + k], img[3 * a + k]);
                img[k] = cx - bw / 2.0;
                img[a + k] = cy - bh / 2.0;
                img[2 * a + k] = cx + bw / 2.0;
                img[3 * a + k] = cy + bh / 2.0;
            }
        }
    }
    let images = ndarray::ArrayD::zeros(vec![dims[0], m.input[1], h, w]);
    let preds = ndarray::ArrayD::from_shape_vec(dims.to_vec(), fed).map_err(|e| e.to_string())?;
    let inputs = [(image_name, images), (sub.input.as_str(), preds)];
    let outs = run(rt, &sub.bytes, sub.external, m.dir, &inputs)
        .map_err(|e| format!("its NMS tail, cut at '{}', does not run: {e}", tail.pred))?;
    let (_, got) = outs
        .into_iter()
        .next()
        .ok_or("its NMS tail gives no output")?;
    let got = RefTensor::new(got.iter().copied().collect(), got.shape().to_vec());
    let input_shape = [dims[0], m.input[1], h, w];
    let want = nms
        .rows(&raw, task, nc, &input_shape)
        .map_err(|e| e.to_string())?;
    let rt = nms.tolerance(tol, task, Some(&input_shape));
    let near = 2.0 * super::rows::score_limit(&want, &rt);
    let candidates = nms.candidates(&raw, task, nc, near as f32);
    let checks = super::nms_rows_check(&got, &want, Some(&candidates), rt);
    Ok((checks.into_iter().filter(|c| !c.pass))
        .map(|c| TaskCheck {
            kind: "nms tail",
            detail: format!("NMS tail on synthetic predictions: {}", c.detail),
            ..c
        })
        .collect())
}

/// Runs `bytes`, from a file beside the ONNX (in `dir`, removed when dropped) where it names
/// `external` data files, which are relative to the ONNX.
fn run(
    rt: &Engine,
    bytes: &[u8],
    external: bool,
    dir: Option<&std::path::Path>,
    inputs: &[(&str, ndarray::ArrayD<f32>)],
) -> Result<Vec<(String, ndarray::ArrayD<f32>)>, String> {
    match (external, dir) {
        (true, Some(dir)) => {
            let mut f = (tempfile::Builder::new().prefix(".fuse-ema-nms-tail-"))
                .suffix(".onnx")
                .tempfile_in(dir)
                .map_err(|e| format!("cannot write beside it: {e}"))?;
            std::io::Write::write_all(&mut f, bytes)
                .map_err(|e| format!("cannot write beside it: {e}"))?;
            rt.run_file(f.path(), inputs).map_err(|e| e.to_string())
        }
        _ => rt.run(bytes, inputs).map_err(|e| e.to_string()),
    }
}

/// The candidate that holds the head's predictions: the earliest whose value, on a seeded
/// image, has their shape (`dims`). The earliest, so that operators an edited graph puts
/// between the head and a later `Concat` are part of the tail that is exercised.
fn pick(
    rt: &Engine,
    m: &TailModel,
    tails: Vec<cut::Tail>,
    dims: &[usize; 3],
    (image_name, seed): (&str, u64),
) -> Result<cut::Tail, String> {
    let probe = cut::probe(m.model, m.bytes, &tails)?;
    let image = super::seeded_images(m.input, seed);
    let image =
        ndarray::ArrayD::from_shape_vec(image.shape, image.data).map_err(|e| e.to_string())?;
    let outs = run(
        rt,
        &probe,
        cut::external(m.bytes)?,
        m.dir,
        &[(image_name, image)],
    )
    .map_err(|e| format!("it does not run with its Concat outputs as outputs: {e}"))?;
    let shape_of = |i: usize| {
        let name = cut::probe_name(i);
        (outs.iter().find(|(n, _)| *n == name)).map(|(_, a)| a.shape().to_vec())
    };
    let at = (0..tails.len()).find(|&i| shape_of(i).as_deref() == Some(&dims[..]));
    match at {
        Some(i) => Ok(tails.into_iter().nth(i).ok_or("no candidate")?),
        None => Err(format!(
            "no Concat along axis 1 that separates its output0 from the image holds the head's \
             predictions (shape {dims:?})"
        )),
    }
}

/// Whether the head hands the NMS corner boxes: Ultralytics' own `nms=True` exports set the
/// head's `xyxy` (exporter: "NMSModel … expects xyxy boxes"; OBB keeps centre, size, angle),
/// fuse-ema's hand it the centre-size boxes the reference reads. Told by the metadata's author:
/// were it false, the tail would be fed boxes it does not expect and disagree on every row, and
/// a head doctored to match the false claim would fail the whole model's rows on seeded images.
fn corners(model: &crate::onnx::proto::Model, task: &str) -> bool {
    let by_ultralytics = (model.metadata.iter()).any(|(k, v)| k == "author" && v == "Ultralytics");
    by_ultralytics && task != "obb"
}

/// splitmix64: deterministic uniform [0, 1) numbers.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Raw (1, 4 + nc + extra, anchors) predictions: about half the anchors (at most 200) are
/// detections in eight clusters of overlapping centre-size boxes, best scores spread evenly over
/// (conf, 1] with the top ones in [0.95, 1] and one exactly 1.0 per cluster (clusters apart, so
/// no two 1.0 boxes overlap), classes drawn from the first three; the others score below conf.
/// Every other class scores well below the best; extras are in [-1, 1).
fn synthetic(
    dims: &[usize; 3],
    conf: f32,
    nc: usize,
    (h, w): (usize, usize),
    seed: u64,
) -> RefTensor {
    let [_, rows, a] = *dims;
    let mut r = Mix(seed ^ 0x6e6d_735f_7461_696c);
    let mut data = vec![0f32; rows * a];
    let (h, w) = (h as f32, w as f32);
    let clusters: Vec<(f32, f32)> = (0..8)
        .map(|c| {
            let (i, j) = (c % 4, c / 4);
            (w * (0.15 + 0.23 * i as f32), h * (0.25 + 0.5 * j as f32))
        })
        .collect();
    let detections = (a / 2).clamp(1, 200);
    for k in 0..a {
        let mut set = |row: usize, v: f32| data[row * a + k] = v;
        let (cx, cy) = clusters[k % clusters.len()];
        let (bw, bh) = (w * (0.08 + 0.06 * r.next()), h * (0.08 + 0.06 * r.next()));
        set(0, cx + (r.next() - 0.5) * bw * 0.4);
        set(1, cy + (r.next() - 0.5) * bh * 0.4);
        set(2, bw);
        set(3, bh);
        let best = if k < detections {
            // Highest first: rank 0..8 (one per cluster) at exactly 1.0, then 0.95..1.0
            // for the next quarter, then the rest of (conf, 0.95).
            let rank = k as f32 / detections as f32;
            if k < clusters.len() {
                1.0
            } else if rank < 0.3 {
                1.0 - 0.05 * (rank / 0.3) - 1e-4 * r.next()
            } else {
                let lo = conf + 0.01 * (1.0 - conf);
                lo + (0.95 - lo) * (1.0 - rank) - 1e-4 * r.next()
            }
        } else {
            conf * 0.9 * r.next()
        };
        let class = (r.next() * 3.0) as usize % nc.clamp(1, 3);
        for c in 0..nc {
            let v = if c == class {
                best
            } else {
                best * 0.3 * r.next()
            };
            set(4 + c, v);
        }
        for e in 4 + nc..rows {
            set(e, 2.0 * r.next() - 1.0);
        }
    }
    RefTensor::new(data, vec![1, rows, a])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synthetic predictions reach the scores seeded images never do, in clusters that
    /// overlap, and differ between seeds.
    #[test]
    fn synthetic_predictions_cover_the_confident_range() {
        let (nc, a, conf) = (5, 8400, 0.25);
        let raw = synthetic(&[1, 4 + nc + 2, a], conf, nc, (640, 640), 7);
        let best: Vec<f32> = (0..a)
            .map(|k| {
                (0..nc)
                    .map(|c| raw.data[(4 + c) * a + k])
                    .fold(0f32, f32::max)
            })
            .collect();
        let above = best.iter().filter(|&&s| s > conf).count();
        assert_eq!(above, 200);
        assert!(best.iter().filter(|&&s| s == 1.0).count() >= 8);
        assert!(best.iter().filter(|&&s| (0.95..1.0).contains(&s)).count() >= 40);
        assert!(best.iter().all(|&s| (0.0..=1.0).contains(&s)));
        let other = synthetic(&[1, 4 + nc + 2, a], conf, nc, (640, 640), 8);
        assert_ne!(raw.data, other.data);
    }
}
