//! A self-contained SVG bar chart of relative drift by layer (log scale), for CI artefacts.

use std::fmt::Write;

use super::Drift;

/// Renders the chart. Deterministic: the same drift gives the same bytes.
pub fn chart(d: &Drift, title: &str) -> String {
    let layers: Vec<(&str, f64)> = d
        .layers
        .iter()
        .map(|l| (l.layer.as_str(), l.rel_l2.unwrap_or(f64::NAN)))
        .collect();
    let (bar, gap, left, top, height) = (14.0, 4.0, 60.0, 40.0, 260.0);
    let width = left + 20.0 + layers.len().max(1) as f64 * (bar + gap);
    let finite: Vec<f64> = layers
        .iter()
        .map(|l| l.1)
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let (hi, lo) = if finite.is_empty() {
        (0.0, -6.0)
    } else {
        let hi = finite
            .iter()
            .cloned()
            .fold(f64::MIN, f64::max)
            .log10()
            .ceil();
        let lo = finite
            .iter()
            .cloned()
            .fold(f64::MAX, f64::min)
            .log10()
            .floor();
        (hi, lo.min(hi - 1.0))
    };
    let y = |v: f64| {
        let t = ((v.max(10f64.powf(lo))).log10() - lo) / (hi - lo);
        top + height * (1.0 - t)
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" \
         font-family=\"sans-serif\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"13\">{t}</text>\n",
        w = width,
        h = top + height + 110.0,
        t = escape(title)
    );
    let mut e = lo as i32;
    while e <= hi as i32 {
        let yy = y(10f64.powi(e));
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{x2:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">1e{e}</text>",
            x2 = width - 10.0,
            tx = left - 4.0,
            ty = yy + 3.0
        );
        e += 1;
    }
    for (i, (name, v)) in layers.iter().enumerate() {
        let x = left + 10.0 + i as f64 * (bar + gap);
        let base = top + height;
        if v.is_finite() {
            let yy = y(*v);
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{bar}\" height=\"{h:.1}\" fill=\"#3b6ea8\">\
                 <title>{n}: {v:.3e}</title></rect>",
                h = base - yy,
                n = escape(name)
            );
        } else {
            let _ = writeln!(s, "<text x=\"{x:.1}\" y=\"{base}\" fill=\"#b00\">?</text>");
        }
        let _ = writeln!(
            s,
            "<text transform=\"translate({tx:.1},{ty:.1}) rotate(60)\">{n}</text>",
            tx = x + bar / 2.0,
            ty = base + 10.0,
            n = escape(name)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"12\" y=\"{yy:.1}\" transform=\"rotate(-90 12 {yy:.1})\" text-anchor=\"middle\">\
         relative L2 drift ‖Δ‖/‖ref‖</text>\n</svg>",
        yy = top + height / 2.0
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
