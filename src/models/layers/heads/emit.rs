//! The emit side of the detection heads: per-level box and class branches, DFL, anchor decoding
//! with anchors and strides as constants for the static input size.

use super::{HeadKind, HeadSpec};
use crate::checkpoint::py::ModuleRef;
use crate::models::LayerInput;
use crate::models::{BuildResult, LayerError};
use crate::onnx::graph::GraphValue;
use crate::onnx::proto::Attr;
use crate::onnx::ultralytics::{Builder, check};

/// Names of the integer constants that pick a feature map's height, width and both out of its
/// runtime shape, and the bounds of `Range` (made once per head, shared by its levels).
pub(crate) struct GridIndices {
    zero: String,
    one: String,
    h: String,
    w: String,
    hw: String,
}

impl Builder<'_> {
    /// Runs a head branch (`nn.Sequential` or a single module) on one level.
    fn branch(&mut self, scope: &str, m: ModuleRef, x: &GraphValue) -> BuildResult<GraphValue> {
        self.module(scope, m, LayerInput::One(x.clone()))
    }

    /// The detection heads in export form: output (B, 4 + nc [+ masks | keypoints | angle],
    /// anchors), boxes in input pixels (centre x, centre y, width, height; rotated boxes for OBB),
    /// sigmoid class scores; segmentation heads also emit the prototypes as a second output. With
    /// `--end2end` the one-to-one branches run, boxes are corners (x1 y1 x2 y2; OBB keeps its
    /// rotated form) and `topk.rs` turns the result into (B, k, 6 + extra) rows.
    pub(crate) fn detect(
        &mut self,
        scope: &str,
        m: ModuleRef,
        xs: &[GraphValue],
    ) -> BuildResult<GraphValue> {
        let spec = HeadSpec::parse(m, xs.len(), self.head)?;
        let class = spec.class.clone();
        let (nc, reg_max, extra_ch) = (spec.nc, spec.reg_max, spec.extra);
        let strides = &spec.strides;
        let (cv2, cv3) = (
            vec![m.child(&spec.branch("cv2"))?.children()],
            vec![m.child(&spec.branch("cv3"))?.children()],
        );
        let cv4 = (spec.extra_branches().iter())
            .map(|name| Ok(m.child(name)?.children()))
            .collect::<BuildResult<Vec<_>>>()?;
        let first = xs
            .first()
            .ok_or_else(|| LayerError::inputs(class, "no inputs"))?;
        let batch = check::nchw(first, scope)?[0];
        let (mut boxes, mut scores, mut extra) = (Vec::new(), Vec::new(), Vec::new());
        let mut a = 0;
        for (i, x) in xs.iter().enumerate() {
            let [_, _, xh, xw] = check::nchw(x, scope)?;
            if !(1..=1 << 14).contains(&xh) || !(1..=1 << 14).contains(&xw) {
                return Err(LayerError::shape(
                    scope,
                    format!("level {i} feature map is {xh}x{xw}"),
                ));
            }
            a += xh * xw;
            let hw = if self.b.dynamic_hw { -1 } else { xh * xw };
            // A level's branch: the i-th module of each list, in turn (`Pose26`'s `cv4` and
            // `cv4_kpts`; one list elsewhere), reshaped to (B, ch, h·w).
            let level =
                |b: &mut Self, names: &[String], heads: &[Vec<(&str, ModuleRef)>], ch: i64| {
                    let mut y = x.clone();
                    let mut s = String::new();
                    for (name, head) in names.iter().zip(heads) {
                        s = format!("{scope}.{name}.{i}");
                        let (_, branch) = head.get(i).ok_or_else(|| {
                            LayerError::shape(
                                format!("{scope}.{name}"),
                                format!("{} branches for {} inputs", head.len(), xs.len()),
                            )
                        })?;
                        y = b.branch(&s, *branch, &y)?;
                    }
                    BuildResult::Ok(b.b.reshape(&s, &y.name, &[0, ch, hw]))
                };
            boxes.push(level(self, &[spec.branch("cv2")], &cv2, 4 * reg_max)?);
            scores.push(level(self, &[spec.branch("cv3")], &cv3, nc)?);
            if extra_ch > 0 {
                extra.push(level(self, &spec.extra_branches(), &cv4, extra_ch)?);
            }
        }
        let cat = |b: &mut Self, v: &[String]| {
            let r: Vec<&str> = v.iter().map(String::as_str).collect();
            b.b.concat(scope, &r, 2)
        };
        let boxes = cat(self, &boxes);
        let scores = cat(self, &scores);
        let extra = if extra_ch > 0 {
            Some(cat(self, &extra))
        } else {
            None
        };
        let dist = if reg_max > 1 {
            self.dfl(&format!("{scope}.dfl"), m.child("dfl")?, &boxes, reg_max)?
        } else {
            boxes
        };
        let (anchor, st) = self.anchors(scope, xs, strides)?;
        let parts = self.b.split(scope, &dist, 1, &[2, 2]);
        // Corners (end-to-end, not OBB) are not halved: no `two` there.
        let two = if spec.kind == HeadKind::Obb || spec.max_det.is_none() {
            self.b.weight(&format!("{scope}/two"), &[], &[2.0])
        } else {
            String::new()
        };
        let mut angle = None;
        let decoded = if spec.kind == HeadKind::Obb {
            // θ = (sigmoid(raw) − 1/4)·π (OBB26: θ = raw), then dist2rbox: rotate the
            // (rb − lt)/2 offset by θ.
            let raw = extra
                .clone()
                .ok_or_else(|| LayerError::shape("OBB", "no angle channels"))?;
            let theta = if spec.yolo26 {
                raw
            } else {
                let sig = self.b.node(scope, "Sigmoid", &[&raw], vec![]);
                let q = self.b.weight(&format!("{scope}/quarter"), &[], &[0.25]);
                let pi = self
                    .b
                    .weight(&format!("{scope}/pi"), &[], &[std::f32::consts::PI]);
                let shifted = self.b.bin(scope, "Sub", &sig, &q);
                self.b.bin(scope, "Mul", &shifted, &pi)
            };
            let cos = self.b.node(scope, "Cos", &[&theta], vec![]);
            let sin = self.b.node(scope, "Sin", &[&theta], vec![]);
            let diff = self.b.bin(scope, "Sub", &parts[1], &parts[0]);
            let half = self.b.bin(scope, "Div", &diff, &two);
            let f = self.b.split(scope, &half, 1, &[1, 1]);
            let (xc, ys) = (
                self.b.bin(scope, "Mul", &f[0], &cos),
                self.b.bin(scope, "Mul", &f[1], &sin),
            );
            let xr = self.b.bin(scope, "Sub", &xc, &ys);
            let (xs_, yc) = (
                self.b.bin(scope, "Mul", &f[0], &sin),
                self.b.bin(scope, "Mul", &f[1], &cos),
            );
            let yr = self.b.bin(scope, "Add", &xs_, &yc);
            let xy = self.b.concat(scope, &[&xr, &yr], 1);
            let xy = self.b.bin(scope, "Add", &xy, &anchor);
            let wh = self.b.bin(scope, "Add", &parts[0], &parts[1]);
            angle = Some(theta);
            self.b.concat(scope, &[&xy, &wh], 1)
        } else if spec.max_det.is_some() {
            // dist2bbox (xyxy, end-to-end): x1y1 = anchor − lt; x2y2 = anchor + rb.
            let x1y1 = self.b.bin(scope, "Sub", &anchor, &parts[0]);
            let x2y2 = self.b.bin(scope, "Add", &anchor, &parts[1]);
            self.b.concat(scope, &[&x1y1, &x2y2], 1)
        } else {
            // dist2bbox (xywh): x1y1 = anchor − lt; x2y2 = anchor + rb.
            let x1y1 = self.b.bin(scope, "Sub", &anchor, &parts[0]);
            let x2y2 = self.b.bin(scope, "Add", &anchor, &parts[1]);
            let sum = self.b.bin(scope, "Add", &x1y1, &x2y2);
            let cxy = self.b.bin(scope, "Div", &sum, &two);
            let wh = self.b.bin(scope, "Sub", &x2y2, &x1y1);
            self.b.concat(scope, &[&cxy, &wh], 1)
        };
        let dbox = self.b.bin(scope, "Mul", &decoded, &st);
        let sig = self.b.node(scope, "Sigmoid", &[&scores], vec![]);
        let mut outs = vec![dbox, sig];
        match spec.kind {
            HeadKind::Segment => {
                outs.push(extra.ok_or_else(|| LayerError::shape("Segment", "no mask channels"))?);
                let proto = self.prototypes(&format!("{scope}.proto"), m.child("proto")?, xs)?;
                self.extra_outputs.push(proto);
            }
            HeadKind::Pose => outs.push(self.keypoints(
                scope,
                &spec,
                &extra.ok_or_else(|| LayerError::shape("Pose", "no keypoint channels"))?,
                &anchor,
                &st,
                a,
            )?),
            HeadKind::Obb => outs.push(angle.ok_or_else(|| LayerError::missing("OBB", "angle"))?),
            HeadKind::Detect => {}
        }
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let y = self.b.concat(scope, &refs, 1);
        let y = GraphValue {
            name: y,
            shape: vec![batch, 4 + nc + extra_ch, a],
        };
        match spec.max_det {
            Some(max_det) => self.end2end_rows(scope, &y, nc, max_det),
            None => Ok(y),
        }
    }

    /// Anchor points (1, 2, A), cell centres in grid units, and each anchor's stride (1, A),
    /// as `make_anchors` gives them: constants for a static input; with a dynamic height and
    /// width, computed in the graph from each level's shape (`Shape`, `Range`, `Expand`).
    pub(crate) fn anchors(
        &mut self,
        scope: &str,
        xs: &[GraphValue],
        strides: &[f64],
    ) -> BuildResult<(String, String)> {
        if !self.b.dynamic_hw {
            let (mut points, mut stride_row) = (Vec::new(), Vec::new());
            for (x, &s) in xs.iter().zip(strides) {
                let [_, _, h, w] = check::nchw(x, scope)?;
                for yy in 0..h {
                    for xx in 0..w {
                        points.push((xx as f32 + 0.5, yy as f32 + 0.5));
                    }
                }
                stride_row.extend(std::iter::repeat_n(s as f32, (h * w) as usize));
            }
            let a = points.len() as i64;
            let ax: Vec<f32> = (points.iter().map(|p| p.0))
                .chain(points.iter().map(|p| p.1))
                .collect();
            let anchor = self.b.weight(&format!("{scope}/anchors"), &[1, 2, a], &ax);
            let st = (self.b).weight(&format!("{scope}/strides"), &[1, a], &stride_row);
            return Ok((anchor, st));
        }
        let s = format!("{scope}/anchors");
        let s = s.as_str();
        let ix = self.grid_indices(s);
        let offset = self.b.weight(&format!("{s}/offset"), &[], &[0.5]);
        let (mut points, mut row) = (Vec::new(), Vec::new());
        for (x, &stride) in xs.iter().zip(strides) {
            // Cell centres: arange(n) + 0.5 along each axis.
            let (gx, gy) = self.runtime_cells(s, &x.name, &ix, "Add", &offset);
            let gx = self.b.reshape(s, &gx, &[1, 1, -1]);
            let gy = self.b.reshape(s, &gy, &[1, 1, -1]);
            points.push(self.b.concat(s, &[&gx, &gy], 1));
            let level = self.b.reshape(s, &gx, &[1, -1]);
            let level_shape = self.b.node(s, "Shape", &[&level], vec![]);
            let st = self
                .b
                .weight(&format!("{s}/stride"), &[1, 1], &[stride as f32]);
            row.push(self.b.node(s, "Expand", &[&st, &level_shape], vec![]));
        }
        let points: Vec<&str> = points.iter().map(String::as_str).collect();
        let row: Vec<&str> = row.iter().map(String::as_str).collect();
        let anchor = self.b.concat(s, &points, 2);
        let st = self.b.concat(s, &row, 1);
        Ok((anchor, st))
    }

    /// The index constants [`Self::runtime_cells`] reads a feature map's shape with.
    pub(crate) fn grid_indices(&mut self, s: &str) -> GridIndices {
        let (zero, one) = (self.b.int_scalar(s, 0), self.b.int_scalar(s, 1));
        let (h, w, hw) = (
            self.b.int_scalar(s, 2),
            self.b.int_scalar(s, 3),
            self.b.ints(s, &[2, 3]),
        );
        GridIndices {
            zero,
            one,
            h,
            w,
            hw,
        }
    }

    /// The cell coordinates of the feature map `y` from its runtime shape, as meshgrid(ij) gives
    /// them: x varying along each row, y down each column, both (h, w), each `arange(n)` in the
    /// compute dtype with `offset` applied by `op` (`Add` or `Sub`).
    pub(crate) fn runtime_cells(
        &mut self,
        s: &str,
        y: &str,
        ix: &GridIndices,
        op: &str,
        offset: &str,
    ) -> (String, String) {
        let dtype = Attr::Int(self.b.dtype as i64);
        let shape = self.b.node(s, "Shape", &[y], vec![]);
        let gather = |b: &mut Self, i: &str| {
            b.b.node(s, "Gather", &[&shape, i], vec![("axis", Attr::Int(0))])
        };
        let (h, w, hw) = (
            gather(self, &ix.h),
            gather(self, &ix.w),
            gather(self, &ix.hw),
        );
        let along = |b: &mut Self, n: &str| {
            let r = b.b.node(s, "Range", &[&ix.zero, n, &ix.one], vec![]);
            let r = b.b.node(s, "Cast", &[&r], vec![("to", dtype.clone())]);
            b.b.bin(s, op, &r, offset)
        };
        let (cx, cy) = (along(self, &w), along(self, &h));
        let cx = self.b.reshape(s, &cx, &[1, -1]);
        let cy = self.b.reshape(s, &cy, &[-1, 1]);
        let gx = self.b.node(s, "Expand", &[&cx, &hw], vec![]);
        let gy = self.b.node(s, "Expand", &[&cy, &hw], vec![]);
        (gx, gy)
    }

    /// Pose keypoints in export form: (xy·2 + anchor − 0.5)·stride (`Pose26`: (xy + anchor)·stride),
    /// visibility through a sigmoid.
    fn keypoints(
        &mut self,
        scope: &str,
        spec: &HeadSpec,
        kpts: &str,
        anchor: &str,
        st: &str,
        a: i64,
    ) -> BuildResult<String> {
        let (n, ndim) = spec
            .kpt_shape
            .ok_or_else(|| LayerError::missing("Pose", "kpt_shape"))?;
        // A dynamic input leaves the anchor count to the graph.
        let a = if self.b.dynamic_hw { -1 } else { a };
        let y = self.b.reshape(scope, kpts, &[0, n, ndim, a]);
        let parts = if ndim == 3 {
            self.b.split(scope, &y, 2, &[2, 1])
        } else {
            vec![y]
        };
        let xy = if spec.yolo26 {
            self.b.bin(scope, "Add", &parts[0], anchor)
        } else {
            let two = self.b.weight(&format!("{scope}/kpt_two"), &[], &[2.0]);
            let half = self.b.weight(&format!("{scope}/kpt_half"), &[], &[0.5]);
            let xy2 = self.b.bin(scope, "Mul", &parts[0], &two);
            let shifted = self.b.bin(scope, "Sub", anchor, &half);
            self.b.bin(scope, "Add", &xy2, &shifted)
        };
        let mut xy = self.b.bin(scope, "Mul", &xy, st);
        if ndim == 3 {
            let vis = self.b.node(scope, "Sigmoid", &[&parts[1]], vec![]);
            xy = self.b.concat(scope, &[&xy, &vis], 2);
        }
        Ok(self.b.reshape(scope, &xy, &[0, n * ndim, a]))
    }

    /// `DFL`: softmax over the `reg_max` bins of each side, then the expectation (a 1×1 conv with
    /// the bin indices as weights, read from the checkpoint).
    fn dfl(&mut self, scope: &str, m: ModuleRef, boxes: &str, reg_max: i64) -> BuildResult<String> {
        let (w, ws) = m.child("conv")?.need_f32("weight")?;
        let x = self.b.reshape(scope, boxes, &[0, 4, reg_max, -1]);
        let t = self.b.node(
            scope,
            "Transpose",
            &[&x],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let s = self
            .b
            .node(scope, "Softmax", &[&t], vec![("axis", Attr::Int(1))]);
        let wn = self.b.weight(&format!("{scope}.conv.weight"), &ws, &w);
        let c = self.b.node(
            scope,
            "Conv",
            &[&s, &wn],
            vec![("kernel_shape", Attr::Ints(vec![1, 1]))],
        );
        Ok(self.b.reshape(scope, &c, &[0, 4, -1]))
    }
}
