//! `diff --plot` draws every text inside its canvas: rendered with resvg (fonts: DejaVu Sans,
//! which the machine image installs), each text element's box is checked against the canvas.
//! The same check covers the SVG plots committed under docs/. Set FUSE_EMA_PLOT_PNG=<dir> to also
//! get each chart as a PNG to look at.

mod common;

use common::{fixture, run};
use fuse_ema::diff::{Drift, LayerDrift, TensorDrift, svg};
use resvg::usvg;

fn options() -> usvg::Options<'static> {
    let mut opt = usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    db.set_sans_serif_family("DejaVu Sans");
    assert!(
        db.faces()
            .any(|f| f.families.iter().any(|(n, _)| n == "DejaVu Sans")),
        "DejaVu Sans is not installed (Debian: fonts-dejavu-core); the check needs a real font"
    );
    opt
}

fn text_boxes(g: &usvg::Group, out: &mut Vec<usvg::Rect>) {
    for n in g.children() {
        match n {
            usvg::Node::Text(t) => out.push(t.abs_bounding_box()),
            usvg::Node::Group(g) => text_boxes(g, out),
            _ => {}
        }
    }
}

/// Renders `svg` and asserts that every text lies inside the canvas.
fn check(case: &str, svg: &str) {
    let tree = usvg::Tree::from_str(svg, &options()).unwrap_or_else(|e| panic!("{case}: {e}"));
    let size = tree.size();
    let mut boxes = Vec::new();
    text_boxes(tree.root(), &mut boxes);
    assert_eq!(
        boxes.len(),
        svg.matches("<text").count(),
        "{case}: every text element was laid out"
    );
    for b in &boxes {
        assert!(b.width() > 0.0, "{case}: empty text box {b:?}");
        assert!(
            b.left() >= 0.0
                && b.top() >= 0.0
                && b.right() <= size.width()
                && b.bottom() <= size.height(),
            "{case}: text box {b:?} leaves the {}x{} canvas",
            size.width(),
            size.height()
        );
    }
    if let Some(dir) = std::env::var_os("FUSE_EMA_PLOT_PNG") {
        let px = size.to_int_size();
        let mut pixmap = resvg::tiny_skia::Pixmap::new(px.width(), px.height()).unwrap();
        resvg::render(
            &tree,
            resvg::tiny_skia::Transform::default(),
            &mut pixmap.as_mut(),
        );
        pixmap
            .save_png(std::path::Path::new(&dir).join(format!("{case}.png")))
            .unwrap();
    }
}

fn drift(layers: &[(&str, Option<f64>)], tensors: &[(&str, Option<f64>)]) -> Drift {
    Drift {
        tensors: tensors
            .iter()
            .map(|&(name, rel_l2)| TensorDrift {
                name: name.into(),
                numel: 100,
                max_abs: 0.1,
                mean_abs: 0.01,
                rel_l2,
                cosine: Some(0.99),
            })
            .collect(),
        layers: layers
            .iter()
            .map(|&(layer, rel_l2)| LayerDrift {
                layer: layer.into(),
                tensors: 1,
                rel_l2,
                max_abs: 0.1,
            })
            .collect(),
        only_a: vec![],
        only_b: vec![],
        skipped: vec![],
    }
}

#[test]
fn every_text_stays_inside_the_canvas() {
    let long_title = format!(
        "EMA (ema) vs raw (model) of {}/last.pt",
        "/home/someone/experiments/2026-11-30/run-with-a-long-name".repeat(6)
    );
    check(
        "long-title",
        &svg::chart(
            &drift(&[("model.0", Some(1e-3))], &[("model.0.w", Some(1e-3))]),
            &long_title,
        ),
    );
    let long: Vec<String> = (0..30)
        .map(|i| format!("model.backbone.stages.{i}.blocks.attention.qkv_projection_with_bias"))
        .collect();
    let layers: Vec<(&str, Option<f64>)> = long
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), Some(10f64.powi(-(i as i32 % 7)) * 0.37)))
        .collect();
    let tensors: Vec<(&str, Option<f64>)> = long
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), Some(0.5 / (i + 1) as f64)))
        .collect();
    check(
        "long-names",
        &svg::chart(&drift(&layers, &tensors), "EMA vs raw of x.pt"),
    );
    let many: Vec<String> = (0..300).map(|i| format!("blocks.{i}")).collect();
    let layers: Vec<(&str, Option<f64>)> = many
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), Some(1e-4 * (1.0 + i as f64))))
        .collect();
    check(
        "many-layers",
        &svg::chart(&drift(&layers, &layers), "EMA vs raw of big.pt"),
    );
    check(
        "one-layer",
        &svg::chart(
            &drift(&[("head", Some(0.2))], &[("head.weight", Some(0.2))]),
            "EMA (ema) vs raw (model) of a.pt",
        ),
    );
    check(
        "undefined-and-zero",
        &svg::chart(
            &drift(
                &[
                    ("WWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWWW.0", None),
                    ("b", Some(0.0)),
                ],
                &[
                    (
                        "MMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMMM.weight",
                        None,
                    ),
                    ("b.bias", Some(0.0)),
                ],
            ),
            "W",
        ),
    );
    check("empty", &svg::chart(&drift(&[], &[]), ""));
}

#[test]
fn the_cli_plot_names_the_file_not_its_path_and_fits() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir
        .path()
        .join("a-directory-with-a-rather-long-name".repeat(3))
        .join("and-another-one-below-it");
    std::fs::create_dir_all(&deep).unwrap();
    let input = deep.join("yolov8-v80-style.pt");
    std::fs::copy(fixture("yolov8-v80-style.pt"), &input).unwrap();
    let plot = dir.path().join("drift.svg");
    let r = run(&[
        "diff",
        input.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let text = std::fs::read_to_string(&plot).unwrap();
    assert!(
        text.contains("of yolov8-v80-style.pt</text>"),
        "title names the file"
    );
    assert!(
        !text.contains("a-directory-with"),
        "no directory in the chart"
    );
    check("cli-yolov8-v80-style", &text);
}

/// The plots committed under docs/ (bench/scaling.sh's cost-against-size chart) keep their text
/// inside the canvas too: the script estimates text widths, this renders them with a real font.
#[test]
fn committed_docs_plots_keep_text_inside_the_canvas() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "svg") {
            check(
                &path.file_stem().unwrap().to_string_lossy(),
                &std::fs::read_to_string(&path).unwrap(),
            );
            seen += 1;
        }
    }
    assert!(seen >= 1, "docs/scaling.svg is committed");
}
