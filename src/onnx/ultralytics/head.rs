//! The Ultralytics `Detect` head in export form: per-level box and class branches, DFL, anchor
//! decoding with anchors and strides as constants for the static input size.

use super::Builder;
use crate::onnx::graph::V;
use crate::onnx::proto::Attr;
use crate::onnx::py::{M, R};

impl Builder<'_> {
    /// Runs a head branch (`nn.Sequential` or a single module) on one level.
    fn branch(&mut self, scope: &str, m: M, x: &V) -> R<V> {
        self.module(scope, m, super::layers::In::One(x.clone()))
    }

    /// `Detect` (YOLOv8 / YOLO11 / YOLOv5u forms, one-to-many head): output (B, 4 + nc, anchors)
    /// with boxes as centre-x, centre-y, width, height in input pixels and sigmoid class scores.
    pub fn detect(&mut self, scope: &str, m: M, xs: &[V]) -> R<V> {
        if m.opt_child("one2one_cv2").is_some() && m.bool("_end2end") != Some(false) {
            return Err("end-to-end (one-to-one) Detect heads (YOLOv10 / YOLO26)".into());
        }
        if m.bool("xyxy") == Some(true) {
            return Err("Detect with xyxy output".into());
        }
        let nc = m.int("nc").ok_or("Detect without nc")?;
        let reg_max = m.int("reg_max").unwrap_or(16);
        let strides = m.attr_tensor_f64("stride").ok_or("Detect without stride")?;
        if strides.len() != xs.len() {
            return Err(format!(
                "Detect has {} strides for {} inputs",
                strides.len(),
                xs.len()
            ));
        }
        let (cv2, cv3) = (m.child("cv2")?.children(), m.child("cv3")?.children());
        let batch = xs[0].shape[0];
        let (mut boxes, mut scores) = (Vec::new(), Vec::new());
        let (mut anchors, mut stride_row) = (Vec::new(), Vec::new());
        for (i, x) in xs.iter().enumerate() {
            let b = self.branch(&format!("{scope}.cv2.{i}"), cv2[i].1, x)?;
            let c = self.branch(&format!("{scope}.cv3.{i}"), cv3[i].1, x)?;
            let hw = x.shape[2] * x.shape[3];
            boxes.push(self.b.reshape(
                &format!("{scope}.cv2.{i}"),
                &b.name,
                &[batch.max(0), 4 * reg_max, hw],
            ));
            scores.push(self.b.reshape(
                &format!("{scope}.cv3.{i}"),
                &c.name,
                &[batch.max(0), nc, hw],
            ));
            for yy in 0..x.shape[2] {
                for xx in 0..x.shape[3] {
                    anchors.push((xx as f32 + 0.5, yy as f32 + 0.5));
                }
            }
            stride_row.extend(std::iter::repeat_n(strides[i] as f32, hw as usize));
        }
        let a = anchors.len() as i64;
        let box_refs: Vec<&str> = boxes.iter().map(String::as_str).collect();
        let score_refs: Vec<&str> = scores.iter().map(String::as_str).collect();
        let boxes = self.b.concat(scope, &box_refs, 2);
        let scores = self.b.concat(scope, &score_refs, 2);

        let dist = if reg_max > 1 {
            self.dfl(&format!("{scope}.dfl"), m.child("dfl")?, &boxes, reg_max)?
        } else {
            boxes
        };
        // dist2bbox (xywh): lt, rb = chunk(2); x1y1 = anchor − lt; x2y2 = anchor + rb.
        let ax: Vec<f32> = anchors
            .iter()
            .map(|p| p.0)
            .chain(anchors.iter().map(|p| p.1))
            .collect();
        let anchor = self.b.weight(&format!("{scope}/anchors"), &[1, 2, a], &ax);
        let parts = self.b.split(scope, &dist, 1, &[2, 2]);
        let x1y1 = self.b.bin(scope, "Sub", &anchor, &parts[0]);
        let x2y2 = self.b.bin(scope, "Add", &anchor, &parts[1]);
        let sum = self.b.bin(scope, "Add", &x1y1, &x2y2);
        let two = self.b.weight(&format!("{scope}/two"), &[], &[2.0]);
        let cxy = self.b.bin(scope, "Div", &sum, &two);
        let wh = self.b.bin(scope, "Sub", &x2y2, &x1y1);
        let xywh = self.b.concat(scope, &[&cxy, &wh], 1);
        let st = self
            .b
            .weight(&format!("{scope}/strides"), &[1, a], &stride_row);
        let dbox = self.b.bin(scope, "Mul", &xywh, &st);
        let sig = self.b.node(scope, "Sigmoid", &[&scores], vec![]);
        let y = self.b.concat(scope, &[&dbox, &sig], 1);
        Ok(V {
            name: y,
            shape: vec![batch, 4 + nc, a],
        })
    }

    /// `DFL`: softmax over the `reg_max` bins of each side, then the expectation (a 1×1 conv with
    /// the bin indices as weights, read from the checkpoint).
    fn dfl(&mut self, scope: &str, m: M, boxes: &str, reg_max: i64) -> R<String> {
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
