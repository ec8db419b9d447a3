//! The row-by-row decoding against the anchor-by-anchor loop it replaced (same expressions, so
//! the same bits), for every head kind, and its independence from the thread count.

use super::*;

/// Values in roughly [−4, 4) from a seed (splitmix64).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}

fn spec(kind: HeadKind, extra: i64, kpt: Option<(i64, i64)>, yolo26: bool) -> HeadSpec {
    HeadSpec {
        class: "Head".into(),
        kind,
        nc: 3,
        reg_max: 4,
        strides: vec![8.0],
        extra,
        kpt_shape: kpt,
        yolo26,
        prefix: "",
        max_det: None,
    }
}

fn level_of(spec: &HeadSpec, (n, h, w): (usize, usize, usize), seed: u64) -> Level {
    let t = |ch: usize, s: u64| RefTensor::new(values(n * ch * h * w, s), vec![n, ch, h, w]);
    let (rm, nc, extra) = (spec.reg_max as usize, spec.nc as usize, spec.extra as usize);
    Level {
        b: t(4 * rm, seed),
        c: t(nc, seed + 1),
        xe: (extra > 0).then(|| t(extra, seed + 2)),
        w,
        stride: 8.0,
    }
}

/// The loop the interpreter ran before: anchor by anchor, every row of one anchor in turn.
fn by_anchor(spec: &HeadSpec, lv: &Level, bins: &[f32]) -> Vec<f32> {
    let (n, hw, w, st) = (lv.b.shape[0], lv.b.shape[2] * lv.w, lv.w, lv.stride);
    let (nc, extra, rm) = (spec.nc as usize, spec.extra as usize, bins.len());
    let rows = 4 + nc + extra;
    let nd = spec.kpt_shape.map_or(1, |(_, d)| d as usize);
    let mut out = vec![0.0f32; n * rows * hw];
    for bi in 0..n {
        for a in 0..hw {
            let (ax, ay) = ((a % w) as f32 + 0.5, (a / w) as f32 + 0.5);
            let mut d = [0.0f32; 4];
            for (side, ds) in d.iter_mut().enumerate() {
                let logit = |r: usize| lv.b.data[(bi * 4 * rm + side * rm + r) * hw + a];
                let mx = (0..rm).map(logit).fold(f32::NEG_INFINITY, f32::max);
                let (mut num, mut den) = (0.0f32, 0.0f32);
                for (r, wr) in bins.iter().enumerate() {
                    let p = vmath::exp(logit(r) - mx);
                    num += p * wr;
                    den += p;
                }
                *ds = num / den;
            }
            let [l, t, r, b] = d;
            let raw = |k: usize| {
                lv.xe
                    .as_ref()
                    .map_or(0.0, |x| x.data[(bi * extra + k) * hw + a])
            };
            let o = |row: usize| (bi * rows + row) * hw + a;
            let (cx, cy, bw, bh) = if spec.kind == HeadKind::Obb {
                let theta = angle(spec, raw(0));
                let (xf, yf) = ((r - l) / 2.0, (b - t) / 2.0);
                let (s, c) = theta.sin_cos();
                (xf * c - yf * s + ax, xf * s + yf * c + ay, l + r, t + b)
            } else {
                let (x1, y1, x2, y2) = (ax - l, ay - t, ax + r, ay + b);
                ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1)
            };
            for (row, v) in [cx, cy, bw, bh].into_iter().enumerate() {
                out[o(row)] = v * st;
            }
            for k in 0..nc {
                out[o(4 + k)] = ops::sigmoid(lv.c.data[(bi * nc + k) * hw + a]);
            }
            let kpt = |v: f32, at: f32| {
                if spec.yolo26 {
                    (v + at) * st
                } else {
                    (v * 2.0 + (at - 0.5)) * st
                }
            };
            match spec.kind {
                HeadKind::Segment => (0..extra).for_each(|k| out[o(4 + nc + k)] = raw(k)),
                HeadKind::Obb => out[o(4 + nc)] = angle(spec, raw(0)),
                HeadKind::Pose => {
                    for kp in 0..extra / nd {
                        out[o(4 + nc + kp * nd)] = kpt(raw(kp * nd), ax);
                        out[o(4 + nc + kp * nd + 1)] = kpt(raw(kp * nd + 1), ay);
                        if nd == 3 {
                            out[o(4 + nc + kp * nd + 2)] = ops::sigmoid(raw(kp * nd + 2));
                        }
                    }
                }
                HeadKind::Detect => {}
            }
        }
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn rows_match_the_anchor_loop_for_every_kind() {
    let bins = [0.0, 1.0, 2.0, 3.0];
    let cases = [
        spec(HeadKind::Detect, 0, None, false),
        spec(HeadKind::Segment, 5, None, false),
        spec(HeadKind::Pose, 6, Some((2, 3)), false),
        spec(HeadKind::Pose, 4, Some((2, 2)), true),
        spec(HeadKind::Obb, 1, None, false),
        spec(HeadKind::Obb, 1, None, true),
    ];
    for (i, s) in cases.iter().enumerate() {
        let lv = level_of(s, (2, 5, 7), 10 * i as u64);
        let hw = 35;
        let mut out = vec![0.0f32; 2 * (4 + 3 + s.extra as usize) * hw];
        level(s, &lv, &bins, (hw, 0), &mut out);
        assert_eq!(
            bits(&out),
            bits(&by_anchor(s, &lv, &bins)),
            "case {i} ({:?})",
            s.kind
        );
    }
}

#[test]
fn levels_fill_their_own_columns_whatever_the_thread_count() {
    let s = spec(HeadKind::Pose, 6, Some((2, 3)), false);
    let bins = [0.0, 1.0, 2.0, 3.0];
    let (a, b) = (level_of(&s, (1, 8, 8), 1), level_of(&s, (1, 4, 4), 2));
    let rows = 4 + 3 + 6;
    let run = || {
        let mut out = vec![f32::NAN; rows * 80];
        level(&s, &a, &bins, (80, 0), &mut out);
        level(&s, &b, &bins, (80, 64), &mut out);
        out
    };
    let mut first = None;
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        let got = pool.install(run);
        assert!(got.iter().all(|v| v.is_finite()), "every column written");
        match &first {
            None => first = Some(bits(&got)),
            Some(want) => assert!(&bits(&got) == want, "{threads} threads differ from one"),
        }
    }
    // The second level's columns are its own decoding.
    let alone = by_anchor(&s, &b, &bins);
    let got = first.unwrap_or_default();
    for r in 0..rows {
        assert_eq!(
            got[r * 80 + 64..r * 80 + 80],
            bits(&alone[r * 16..r * 16 + 16])[..]
        );
    }
}
