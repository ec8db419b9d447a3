//! A self-contained SVG chart of relative drift, for CI artefacts: one bar per layer (log scale),
//! then the most drifted tensors. No font is embedded, so every text's width is estimated on the
//! wide side (DejaVu Sans, a wide sans-serif) and the canvas is sized to hold it; names too long
//! for their place are shortened in the middle, keeping both ends.

use std::fmt::Write;

use super::{Drift, TensorDrift};

/// Font sizes (px).
const TITLE: f64 = 13.0;
const HEADING: f64 = 11.0;
const LABEL: f64 = 10.0;
/// Outer margin.
const MARGIN: f64 = 12.0;
/// Layer bars: width, gap, height of the plot area.
const BAR: f64 = 14.0;
const GAP: f64 = 4.0;
const PLOT_H: f64 = 200.0;
/// Left edge of the layer plot (room for the `1e-10` tick labels).
const AXIS_X: f64 = 52.0;
/// Longest layer label, before the 60° rotation.
const LAYER_LABEL_MAX: f64 = 150.0;
/// Rows in the strip of most drifted tensors, their height, and the tensor name column's limit.
const TOP_ROWS: usize = 15;
const ROW_H: f64 = 16.0;
const NAME_MAX: f64 = 330.0;
/// Length of the longest tensor bar.
const STRIP_W: f64 = 240.0;
/// Canvas width bounds: at least room for a readable title, at most what a page shows.
const MIN_W: f64 = 480.0;
const MAX_W: f64 = 1400.0;

/// Renders the chart. Deterministic: the same drift gives the same bytes. `title` should name
/// files, not full paths (it is shortened to fit the canvas when it is longer).
pub fn chart(d: &Drift, title: &str) -> String {
    let layers: Vec<(String, f64)> = d
        .layers
        .iter()
        .map(|l| {
            let label = fit(&l.layer, LAYER_LABEL_MAX, LABEL);
            (label, l.rel_l2.unwrap_or(f64::NAN))
        })
        .collect();
    let top = d.top(TOP_ROWS);
    let scale = Scale::of(
        layers
            .iter()
            .map(|l| l.1)
            .chain(top.iter().filter_map(|t| t.rel_l2)),
    );

    // Layer panel geometry: labels hang below the bars at 60°, so they need height
    // (sin 60° of their length) and the last one needs room to its right (cos 60°).
    let plot_top = 54.0;
    let base = plot_top + PLOT_H;
    let bar_x = |i: usize| AXIS_X + 8.0 + i as f64 * (BAR + GAP);
    let plot_right = bar_x(layers.len().max(1)) + 4.0;
    let longest = layers
        .iter()
        .map(|l| text_width(&l.0, LABEL))
        .fold(0.0, f64::max);
    let (sin, cos) = (60f64.to_radians().sin(), 60f64.to_radians().cos());
    let labels_bottom = base + 8.0 + sin * longest + cos * LABEL + 4.0;
    let labels_right = layers
        .iter()
        .enumerate()
        .map(|(i, l)| bar_x(i) + BAR / 2.0 + cos * text_width(&l.0, LABEL) + sin * LABEL)
        .fold(plot_right, f64::max);

    // Tensor strip geometry.
    let names: Vec<String> = top.iter().map(|t| fit(&t.name, NAME_MAX, LABEL)).collect();
    let values: Vec<String> = top.iter().map(|t| value_text(t)).collect();
    let name_w = names
        .iter()
        .map(|n| text_width(n, LABEL))
        .fold(0.0, f64::max);
    let value_w = values
        .iter()
        .map(|v| text_width(v, LABEL))
        .fold(0.0, f64::max);
    let strip_top = labels_bottom + 28.0;
    let name_right = MARGIN + name_w;
    let strip_x = name_right + 6.0;
    let strip_right = strip_x + STRIP_W + 4.0 + value_w;

    let heading1 = "relative L2 drift ‖Δ‖/‖ref‖ by layer (log scale)";
    let heading2 = format!(
        "the {} most drifted tensors (relative L2, log scale)",
        top.len()
    );
    let content = [
        labels_right,
        strip_right,
        MARGIN + text_width(heading1, HEADING),
        MARGIN + text_width(&heading2, HEADING),
    ]
    .into_iter()
    .fold(MIN_W - MARGIN, f64::max);
    let width = (content + MARGIN)
        .max((MARGIN * 2.0 + text_width(title, TITLE)).min(MAX_W))
        .ceil();
    let title = fit(title, width - 2.0 * MARGIN, TITLE);
    let rows_end = strip_top + 10.0 + top.len().max(1) as f64 * ROW_H;
    let height = (rows_end + MARGIN).ceil();

    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"{LABEL}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{MARGIN}\" y=\"42\" font-size=\"{HEADING}\">{h}</text>\n",
        h = escape(heading1),
    );
    if !title.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{MARGIN}\" y=\"22\" font-size=\"{TITLE}\">{t}</text>",
            t = escape(&title)
        );
    }
    // Grid and decade labels.
    let y = |v: f64| plot_top + PLOT_H * (1.0 - scale.frac(v));
    for e in scale.decades() {
        let yy = y(10f64.powi(e));
        let _ = writeln!(
            s,
            "<line x1=\"{AXIS_X}\" x2=\"{plot_right:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">1e{e}</text>",
            tx = AXIS_X - 4.0,
            ty = yy + 3.0
        );
    }
    for (i, ((label, v), layer)) in layers.iter().zip(&d.layers).enumerate() {
        let x = bar_x(i);
        if v.is_finite() {
            let yy = y(*v);
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{BAR}\" height=\"{h:.1}\" fill=\"#3b6ea8\">\
                 <title>{n}: {v:.3e}</title></rect>",
                h = base - yy,
                n = escape(&layer.layer)
            );
        } else {
            let _ = writeln!(
                s,
                "<text x=\"{x:.1}\" y=\"{yy:.1}\" fill=\"#b00\">?</text>",
                yy = base - 2.0
            );
        }
        let _ = writeln!(
            s,
            "<text transform=\"translate({tx:.1},{ty:.1}) rotate(60)\">{n}</text>",
            tx = x + BAR / 2.0,
            ty = base + 8.0,
            n = escape(label)
        );
    }

    // The strip: one row per tensor, bar length on the same log scale.
    let _ = writeln!(
        s,
        "<text x=\"{MARGIN}\" y=\"{yy:.1}\" font-size=\"{HEADING}\">{h}</text>",
        yy = strip_top,
        h = escape(&heading2)
    );
    for (i, ((t, name), value)) in top.iter().zip(&names).zip(&values).enumerate() {
        let row = strip_top + 10.0 + i as f64 * ROW_H;
        let text_y = row + ROW_H / 2.0 + 3.5;
        let _ = write!(
            s,
            "<text x=\"{name_right:.1}\" y=\"{text_y:.1}\" text-anchor=\"end\">{n}</text>",
            n = escape(name)
        );
        let (len, color) = match t.rel_l2 {
            Some(v) if v.is_finite() => (STRIP_W * scale.frac(v), "#3b6ea8"),
            _ => (0.0, "#b00"),
        };
        let _ = writeln!(
            s,
            "<rect x=\"{strip_x:.1}\" y=\"{ry:.1}\" width=\"{len:.1}\" height=\"{rh:.1}\" fill=\"{color}\">\
             <title>{full}: {value}</title></rect>\
             <text x=\"{vx:.1}\" y=\"{text_y:.1}\" fill=\"{color}\">{value}</text>",
            ry = row + 3.0,
            rh = ROW_H - 6.0,
            full = escape(&t.name),
            vx = strip_x + len + 4.0,
            value = escape(value),
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The value printed beside a tensor's bar.
fn value_text(t: &TensorDrift) -> String {
    match t.rel_l2 {
        Some(0.0) => "0".into(),
        Some(v) if v.is_finite() => format!("{v:.2e}"),
        Some(_) => "not a number".into(),
        None => "undefined (reference is zero)".into(),
    }
}

/// A log10 axis covering whole decades.
struct Scale {
    lo: f64,
    hi: f64,
}

impl Scale {
    /// The decades spanning the finite positive values (at most twelve, counted down from the
    /// largest); 1e-6..1 when there are none.
    fn of(values: impl Iterator<Item = f64>) -> Scale {
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && *v > 0.0) {
            min = min.min(v);
            max = max.max(v);
        }
        if !min.is_finite() {
            return Scale { lo: -6.0, hi: 0.0 };
        }
        let hi = max.log10().ceil();
        let lo = min.log10().floor().min(hi - 1.0).max(hi - 12.0);
        Scale { lo, hi }
    }

    /// Where `v` lies on the axis, 0 (at or below the lowest decade) to 1.
    fn frac(&self, v: f64) -> f64 {
        ((v.max(10f64.powf(self.lo)).log10() - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }

    fn decades(&self) -> impl Iterator<Item = i32> {
        self.lo as i32..=self.hi as i32
    }
}

/// Estimated advance width of `s` at font size `size`, on the wide side: per-character widths at
/// least those of DejaVu Sans, whose glyphs are wider than most sans-serif fonts'.
pub fn text_width(s: &str, size: f64) -> f64 {
    s.chars().map(em_width).sum::<f64>() * size
}

fn em_width(c: char) -> f64 {
    match c {
        'i' | 'j' | 'l' | 'I' | 'f' | 't' | 'r' | '.' | ',' | ':' | ';' | '\'' | '|' | '!'
        | ' ' | '(' | ')' | '[' | ']' | '/' | '-' => 0.42,
        'm' | 'w' | 'M' | 'W' | '@' | '%' | '#' | '&' => 1.0,
        c if c.is_ascii_uppercase() => 0.8,
        c if c.is_ascii() => 0.64,
        _ => 1.0,
    }
}

/// `s` shortened to at most `max` pixels at `size` by replacing its middle with `…`, keeping
/// the start and (a little more of) the end, which is where names differ.
pub fn fit(s: &str, max: f64, size: f64) -> String {
    if text_width(s, size) <= max {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut room = max - em_width('…') * size;
    let (mut head, mut tail) = (0usize, 0usize);
    // Take characters from both ends, two from the end for each one from the start.
    loop {
        let from_tail = tail < 2 * head + 2;
        let next = if from_tail {
            chars[chars.len() - 1 - tail]
        } else {
            chars[head]
        };
        let w = em_width(next) * size;
        if head + tail + 1 >= chars.len() || w > room {
            break;
        }
        room -= w;
        if from_tail {
            tail += 1;
        } else {
            head += 1;
        }
    }
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_both_ends_within_the_width() {
        let name = "model.backbone.stages.3.blocks.11.attention.qkv.weight";
        let short = fit(name, 120.0, LABEL);
        assert!(text_width(&short, LABEL) <= 120.0, "{short}");
        assert!(
            short.starts_with("mo") && short.ends_with("weight"),
            "{short}"
        );
        assert!(short.contains('…'));
        assert_eq!(fit("model.3", 120.0, LABEL), "model.3");
        assert_eq!(fit("", 0.0, LABEL), "");
        assert!(text_width(&fit("WWWWWWWW", 5.0, LABEL), LABEL) <= 10.0);
    }

    #[test]
    fn scale_spans_whole_decades_and_clamps() {
        let s = Scale::of([3e-4, 0.02, f64::NAN, 0.0].into_iter());
        assert_eq!((s.lo, s.hi), (-4.0, -1.0));
        assert_eq!(s.frac(1e-9), 0.0);
        assert_eq!(s.frac(0.1), 1.0);
        let s = Scale::of([1e-30, 1.0].into_iter());
        assert_eq!((s.lo, s.hi), (-12.0, 0.0));
    }
}
