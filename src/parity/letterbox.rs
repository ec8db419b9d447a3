//! A user image prepared the way Ultralytics prepares it for a fixed-size model: scaled to fit
//! (bilinear, OpenCV's pixel-centre convention), centred on a 114-grey canvas, RGB, [0, 1], CHW.

use std::path::Path;

use crate::reference::ops::RefTensor;

/// Python's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// Letterboxes `path` to (batch, 3, h, w), the image repeated over the batch.
pub fn letterbox(
    path: &Path,
    batch: usize,
    h: usize,
    w: usize,
) -> Result<RefTensor, super::ParityError> {
    let img = image::open(path)
        .map_err(|source| super::ParityError::Image {
            path: path.to_path_buf(),
            source,
        })?
        .to_rgb8();
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let r = (h as f64 / ih as f64).min(w as f64 / iw as f64);
    let nw = round_half_even(iw as f64 * r).max(1) as usize;
    let nh = round_half_even(ih as f64 * r).max(1) as usize;
    let (dw, dh) = ((w - nw.min(w)) as f64 / 2.0, (h - nh.min(h)) as f64 / 2.0);
    let (left, top) = (
        round_half_even(dw - 0.1) as usize,
        round_half_even(dh - 0.1) as usize,
    );
    let plane = h * w;
    let mut one = vec![114.0f32 / 255.0; 3 * plane];
    let (sx, sy) = (iw as f64 / nw as f64, ih as f64 / nh as f64);
    let px = |x: usize, y: usize, c: usize| img.get_pixel(x as u32, y as u32)[c] as f64;
    let axis = |d: usize, s: f64, n: usize| {
        let f = ((d as f64 + 0.5) * s - 0.5).max(0.0);
        let i0 = (f.floor() as usize).min(n - 1);
        (
            i0,
            (i0 + 1).min(n - 1),
            if i0 + 1 < n { f - i0 as f64 } else { 0.0 },
        )
    };
    for y in 0..nh.min(h - top) {
        let (y0, y1, fy) = axis(y, sy, ih);
        for x in 0..nw.min(w - left) {
            let (x0, x1, fx) = axis(x, sx, iw);
            for c in 0..3 {
                let v = px(x0, y0, c) * (1.0 - fx) * (1.0 - fy)
                    + px(x1, y0, c) * fx * (1.0 - fy)
                    + px(x0, y1, c) * (1.0 - fx) * fy
                    + px(x1, y1, c) * fx * fy;
                one[c * plane + (top + y) * w + left + x] =
                    (v.round().clamp(0.0, 255.0) / 255.0) as f32;
            }
        }
    }
    let data = one
        .iter()
        .copied()
        .cycle()
        .take(batch * one.len())
        .collect();
    Ok(RefTensor::new(data, vec![batch, 3, h, w]))
}

#[cfg(test)]
mod tests {
    use super::round_half_even;

    #[test]
    fn rounds_like_python() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(-0.5), 0);
        assert_eq!(round_half_even(2.6), 3);
    }
}
