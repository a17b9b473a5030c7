//! Charts for the benchmarks: each [`Chart`] is written as SVG and PNG.
//!
//! Built on `plotters` without system font lookup: the PNG renderer draws its
//! text with DejaVu Sans, bundled in `assets/fonts/` and registered with
//! plotters' `ab_glyph` support under the family name `sans-serif`. The SVG
//! file only names that family and leaves the font to whatever displays it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Pixel size of both the SVG and the PNG.
const SIZE: (u32, u32) = (1024, 640);
/// Font family used for every text in a chart (and under which the bundled
/// font is registered).
const FONT: &str = "sans-serif";
/// DejaVu Sans; see `assets/fonts/LICENSE-DejaVu`.
const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Axis scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Base-10 logarithmic; non-positive values are left out.
    Log,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Lines,
    Points,
    LinesAndPoints,
    /// A step line: each value holds until the next point's x (e.g. concurrency over time).
    Steps,
}

/// One labelled data series.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
}

/// A chart: axes, data series and reference lines.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
    /// Horizontal reference lines with a label (e.g. the paper's 61 s), drawn dashed.
    pub references: Vec<(String, f64)>,
}

/// Writes `{dir}/{stem}.svg` and `{dir}/{stem}.png` (1024x640); returns both paths.
pub fn write(chart: &Chart, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let layout = Layout::new(chart);

    let svg_path = dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        render(&root, chart, &layout).context("drawing the SVG chart")?;
        root.present().map_err(area_err)?;
    }
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;

    let png_path = dir.join(format!("{stem}.png"));
    {
        let root = BitMapBackend::new(&png_path, SIZE).into_drawing_area();
        render(&root, chart, &layout).context("drawing the PNG chart")?;
        root.present()
            .map_err(area_err)
            .with_context(|| format!("writing {}", png_path.display()))?;
    }

    Ok(vec![svg_path, png_path])
}

/// Registers the bundled font once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "the bundled font DejaVuSans.ttf could not be loaded"
        ))
    }
}

fn area_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("plotters: {e}")
}

/// Colours for series, in order (matplotlib's "tab10"); more series cycle through Palette99.
const SERIES_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Colours for reference lines: dark, to stand apart from the data.
const REFERENCE_COLOURS: [RGBColor; 4] = [
    RGBColor(0, 0, 0),
    RGBColor(120, 0, 0),
    RGBColor(0, 70, 120),
    RGBColor(90, 90, 90),
];

fn series_colour(i: usize) -> RGBColor {
    match SERIES_COLOURS.get(i) {
        Some(c) => *c,
        None => {
            let (r, g, b) = Palette99::pick(i - SERIES_COLOURS.len()).rgb();
            RGBColor(r, g, b)
        }
    }
}

/// Everything computed from the data before drawing: ranges, the points to
/// draw per series and the legend corner.
struct Layout {
    x: Range<f64>,
    y: Range<f64>,
    /// Per series, the drawable points (non-finite and, on log axes,
    /// non-positive ones left out; step lines expanded).
    paths: Vec<Vec<(f64, f64)>>,
    references: Vec<(String, f64)>,
    legend: SeriesLabelPosition,
}

impl Layout {
    fn new(chart: &Chart) -> Self {
        let ok_x = |v: f64| v.is_finite() && (chart.x_scale == Scale::Linear || v > 0.0);
        let ok_y = |v: f64| v.is_finite() && (chart.y_scale == Scale::Linear || v > 0.0);

        let mut paths = Vec::with_capacity(chart.series.len());
        for s in &chart.series {
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| ok_x(x) && ok_y(y))
                .collect();
            if s.style == Style::Steps {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                pts = steps(&pts);
            }
            paths.push(pts);
        }
        let references: Vec<(String, f64)> = chart
            .references
            .iter()
            .filter(|(_, v)| ok_y(*v))
            .cloned()
            .collect();

        let xs = paths.iter().flatten().map(|p| p.0);
        let ys = paths
            .iter()
            .flatten()
            .map(|p| p.1)
            .chain(references.iter().map(|r| r.1));
        let x = axis_range(xs, chart.x_scale);
        let y = axis_range(ys, chart.y_scale);

        let legend = legend_corner(&paths, &chart.series, &references, &x, &y, chart);
        Layout {
            x,
            y,
            paths,
            references,
            legend,
        }
    }
}

/// Expands points (sorted by x) into a step line that holds each value until the next x.
fn steps(pts: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(pts.len() * 2);
    for (i, &(x, y)) in pts.iter().enumerate() {
        out.push((x, y));
        if let Some(&(next_x, _)) = pts.get(i + 1) {
            out.push((next_x, y));
        }
    }
    out
}

/// The padded axis range of `values` (already filtered for the scale).
fn axis_range(values: impl Iterator<Item = f64>, scale: Scale) -> Range<f64> {
    let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if min > max {
        // No data: an empty frame.
        return match scale {
            Scale::Linear => 0.0..1.0,
            Scale::Log => 1.0..10.0,
        };
    }
    match scale {
        Scale::Linear => {
            let span = max - min;
            let pad = if span > 0.0 {
                span * 0.05
            } else if min != 0.0 {
                min.abs() * 0.1
            } else {
                1.0
            };
            let mut lo = min - pad;
            if min >= 0.0 && lo < 0.0 {
                lo = 0.0;
            }
            lo..max + pad
        }
        Scale::Log => {
            // Pad by a factor (ticks come from `log_ticks`, so no need to snap to decades).
            min / 1.25..max * 1.25
        }
    }
}

/// Position of `v` within `r` as a fraction, on the axis' scale.
fn fraction(v: f64, r: &Range<f64>, scale: Scale) -> f64 {
    match scale {
        Scale::Linear => (v - r.start) / (r.end - r.start),
        Scale::Log => (v.ln() - r.start.ln()) / (r.end.ln() - r.start.ln()),
    }
}

/// The plot-area corner the data crowd least, for the legend.
fn legend_corner(
    paths: &[Vec<(f64, f64)>],
    series: &[Series],
    references: &[(String, f64)],
    x: &Range<f64>,
    y: &Range<f64>,
    chart: &Chart,
) -> SeriesLabelPosition {
    // Normalised sample points: data points, points along drawn lines, and along references.
    let mut samples: Vec<(f64, f64)> = Vec::new();
    for (pts, s) in paths.iter().zip(series) {
        let norm: Vec<(f64, f64)> = pts
            .iter()
            .map(|&(px, py)| {
                (
                    fraction(px, x, chart.x_scale),
                    fraction(py, y, chart.y_scale),
                )
            })
            .collect();
        samples.extend(&norm);
        if s.style != Style::Points {
            for w in norm.windows(2) {
                for k in 1..8 {
                    let t = f64::from(k) / 8.0;
                    samples.push((
                        w[0].0 + (w[1].0 - w[0].0) * t,
                        w[0].1 + (w[1].1 - w[0].1) * t,
                    ));
                }
            }
        }
    }
    for (_, v) in references {
        let fy = fraction(*v, y, chart.y_scale);
        samples.extend((0..=20).map(|k| (f64::from(k) / 20.0, fy)));
    }

    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, right, upper) in corners {
        let crowd = samples
            .iter()
            .filter(|&&(fx, fy)| {
                let in_x = if right { fx >= 0.6 } else { fx <= 0.4 };
                let in_y = if upper { fy >= 0.65 } else { fy <= 0.35 };
                in_x && in_y
            })
            .count();
        if crowd < best.0 {
            best = (crowd, pos);
        }
    }
    best.1
}

/// Formats a tick value compactly: at most about five significant digits,
/// trailing zeros dropped, exponent notation for very large or small values.
fn tick_label(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim_zeros(mantissa));
    }
    let decimals = (4 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = trim_zeros(&format!("{v:.decimals$}")).to_string();
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A log axis: plotters' `LogCoord` for the mapping, with our own ticks
/// (plotters' own skip everything below the first power of ten).
struct LogAxis {
    coord: LogCoord<f64>,
    range: Range<f64>,
}

impl LogAxis {
    fn new(range: Range<f64>) -> Self {
        LogAxis {
            coord: range.clone().log_scale().into(),
            range,
        }
    }
}

impl Ranged for LogAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.coord.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        log_ticks(&self.range, hint.max_num_points())
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for LogAxis {
    fn format(value: &f64) -> String {
        tick_label(*value)
    }
}

/// At most `max` ticks for a log axis over `range` (positive): the densest of
/// 1..9, 1-2-5 or 1 times the powers of ten that fits, every n-th power of
/// ten for very wide ranges, and linear ticks for ranges too narrow to hold
/// two of those.
fn log_ticks(range: &Range<f64>, max: usize) -> Vec<f64> {
    const SETS: [&[f64]; 3] = [
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        &[1.0, 2.0, 5.0],
        &[1.0],
    ];
    let (lo, hi) = (range.start, range.end);
    if max == 0 || !(lo > 0.0 && hi > lo) {
        return Vec::new();
    }
    let collect = |set: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (k0..=k1)
            .flat_map(|k| set.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|&v| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9))
            .collect()
    };
    if collect(SETS[0]).len() < 2 {
        return RangedCoordf64::from(range.clone()).key_points(max);
    }
    for set in SETS {
        let ticks = collect(set);
        if ticks.len() <= max {
            return ticks;
        }
    }
    let decades = collect(SETS[2]);
    let step = decades.len().div_ceil(max);
    decades.into_iter().step_by(step).collect()
}

/// Dispatches on the axis scales and draws the whole chart onto `root`.
fn render<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
    layout: &Layout,
) -> Result<()> {
    root.fill(&WHITE).map_err(area_err)?;
    let (x, y) = (layout.x.clone(), layout.y.clone());
    match (chart.x_scale, chart.y_scale) {
        (Scale::Linear, Scale::Linear) => draw(
            root,
            chart,
            layout,
            RangedCoordf64::from(x),
            RangedCoordf64::from(y),
        ),
        (Scale::Linear, Scale::Log) => draw(
            root,
            chart,
            layout,
            RangedCoordf64::from(x),
            LogAxis::new(y),
        ),
        (Scale::Log, Scale::Linear) => draw(
            root,
            chart,
            layout,
            LogAxis::new(x),
            RangedCoordf64::from(y),
        ),
        (Scale::Log, Scale::Log) => draw(root, chart, layout, LogAxis::new(x), LogAxis::new(y)),
    }
}

fn draw<DB, X, Y>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
    layout: &Layout,
    x: X,
    y: Y,
) -> Result<()>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, (FONT, 26))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(84)
        .build_cartesian_2d(x, y)
        .map_err(area_err)?;

    let fmt = |v: &f64| tick_label(*v);
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(area_err)?;

    let mut labelled = false;
    for (i, (s, pts)) in chart.series.iter().zip(&layout.paths).enumerate() {
        let colour = series_colour(i);
        let line = colour.stroke_width(2);
        let marker = colour.filled();
        let lines = s.style != Style::Points;
        let points = matches!(s.style, Style::Points | Style::LinesAndPoints);

        let anno = if lines {
            ctx.draw_series(LineSeries::new(pts.iter().copied(), line))
                .map_err(area_err)?
        } else {
            ctx.draw_series(
                pts.iter()
                    .map(|&p| Circle::new(p, 3, marker))
                    .collect::<Vec<_>>(),
            )
            .map_err(area_err)?
        };
        anno.label(s.label.as_str()).legend(move |(lx, ly)| {
            // A line, a dot, or both; the unused part is drawn transparent.
            let stroke = if lines {
                line
            } else {
                TRANSPARENT.stroke_width(1)
            };
            let dot = if points { marker } else { TRANSPARENT.filled() };
            EmptyElement::at((lx, ly))
                + PathElement::new(vec![(0, 0), (20, 0)], stroke)
                + Circle::new((10, 0), 3, dot)
        });
        labelled = true;

        if lines && points {
            ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 3, marker)))
                .map_err(area_err)?;
        }
    }

    for (i, (label, v)) in layout.references.iter().enumerate() {
        let colour = REFERENCE_COLOURS[i % REFERENCE_COLOURS.len()];
        let style = colour.stroke_width(2);
        let ends = [(layout.x.start, *v), (layout.x.end, *v)];
        ctx.draw_series(DashedLineSeries::new(ends, 10, 6, style))
            .map_err(area_err)?
            .label(label.as_str())
            .legend(move |(lx, ly)| {
                EmptyElement::at((lx, ly))
                    + PathElement::new(vec![(0, 0), (8, 0)], style)
                    + PathElement::new(vec![(12, 0), (20, 0)], style)
            });
        labelled = true;
    }

    if labelled {
        ctx.configure_series_labels()
            .position(layout.legend.clone())
            .margin(12)
            .legend_area_size(26)
            .label_font((FONT, 16))
            .border_style(BLACK.mix(0.4))
            .background_style(WHITE)
            .draw()
            .map_err(area_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    fn series(label: &str, style: Style, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            style,
        }
    }

    fn chart(x_scale: Scale, y_scale: Scale, series: Vec<Series>) -> Chart {
        Chart {
            title: "Batch latency".into(),
            x_label: "input size (MB)".into(),
            y_label: "time (s)".into(),
            x_scale,
            y_scale,
            series,
            references: vec![("paper: 61 s".into(), 61.0)],
        }
    }

    /// Width and height from the PNG's IHDR chunk.
    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], &PNG_SIGNATURE, "not a PNG");
        assert_eq!(&bytes[12..16], b"IHDR");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        (w, h)
    }

    fn check(chart: &Chart, stem: &str) {
        let dir = tempfile::tempdir().unwrap();
        let paths = write(chart, dir.path(), stem).unwrap();
        assert_eq!(
            paths,
            vec![
                dir.path().join(format!("{stem}.svg")),
                dir.path().join(format!("{stem}.png"))
            ]
        );
        let svg = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains(&chart.title));
        assert!(svg.contains("sans-serif"));
        for s in &chart.series {
            assert!(svg.contains(&s.label), "legend label {:?} missing", s.label);
        }
        for (label, _) in &chart.references {
            assert!(svg.contains(label.as_str()), "reference {label:?} missing");
        }
        let png = std::fs::read(&paths[1]).unwrap();
        assert_eq!(png_size(&png), SIZE);
    }

    fn all_styles() -> Vec<Series> {
        let xs: [f64; 7] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
        let styles = [
            ("lines", Style::Lines),
            ("points", Style::Points),
            ("lines+points", Style::LinesAndPoints),
            ("steps", Style::Steps),
        ];
        styles
            .iter()
            .enumerate()
            .map(|(i, &(label, style))| {
                let k = i as f64 + 1.0;
                series(
                    label,
                    style,
                    xs.iter().map(|&x| (x, k * x.sqrt() * 9.0)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn every_style_on_every_scale() {
        for (i, (xs, ys)) in [
            (Scale::Linear, Scale::Linear),
            (Scale::Linear, Scale::Log),
            (Scale::Log, Scale::Linear),
            (Scale::Log, Scale::Log),
        ]
        .into_iter()
        .enumerate()
        {
            check(&chart(xs, ys, all_styles()), &format!("chart{i}"));
        }
    }

    #[test]
    fn each_style_alone() {
        for (i, s) in all_styles().into_iter().enumerate() {
            check(
                &chart(Scale::Linear, Scale::Log, vec![s]),
                &format!("one{i}"),
            );
        }
    }

    #[test]
    fn empty_charts_draw_a_frame() {
        let mut c = chart(Scale::Log, Scale::Log, vec![]);
        c.references.clear();
        check(&c, "empty");
        check(&chart(Scale::Linear, Scale::Linear, vec![]), "refs-only");
        let empties = vec![
            series("nothing", Style::Lines, vec![]),
            series("one point", Style::Steps, vec![(3.0, 4.0)]),
            series("non-positive", Style::Points, vec![(0.0, 1.0), (-1.0, 0.0)]),
            series(
                "not finite",
                Style::Lines,
                vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)],
            ),
        ];
        check(
            &chart(Scale::Log, Scale::Log, empties.clone()),
            "log-empties",
        );
        check(&chart(Scale::Linear, Scale::Linear, empties), "lin-empties");
    }

    #[test]
    fn step_lines_hold_values() {
        assert_eq!(
            steps(&[(0.0, 1.0), (2.0, 3.0), (5.0, 0.0)]),
            vec![(0.0, 1.0), (2.0, 1.0), (2.0, 3.0), (5.0, 3.0), (5.0, 0.0)]
        );
        assert!(steps(&[]).is_empty());
    }

    #[test]
    fn ranges_follow_data_and_references() {
        let r = axis_range([2.0, 4.0].into_iter(), Scale::Linear);
        assert!(r.start < 2.0 && r.start >= 0.0 && r.end > 4.0);
        let r = axis_range([5.0].into_iter(), Scale::Linear);
        assert!(r.start < 5.0 && r.end > 5.0);
        assert_eq!(axis_range(std::iter::empty(), Scale::Linear), 0.0..1.0);
        let r = axis_range([0.5, 2000.0].into_iter(), Scale::Log);
        assert!(r.start > 0.0 && r.start < 0.5 && r.end > 2000.0);
        let r = axis_range([60.0, 70.0].into_iter(), Scale::Log);
        assert!(r.start < 60.0 && r.end > 70.0);

        let c = chart(
            Scale::Linear,
            Scale::Log,
            vec![series(
                "a",
                Style::Lines,
                vec![(0.0, 1.0), (1.0, 2.0), (2.0, -3.0)],
            )],
        );
        let l = Layout::new(&c);
        assert!(l.y.start < 1.0 && l.y.end > 61.0, "{:?}", l.y);
        assert_eq!(l.paths[0].len(), 2);
    }

    #[test]
    fn log_ticks_fit_the_range() {
        let ticks = |lo: f64, hi: f64, max| log_ticks(&(lo..hi), max);
        assert_eq!(
            ticks(0.8, 120.0, 10),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(ticks(0.8, 120.0, 100).len(), 21); // 0.8, 0.9, 1..9, 10..90, 100
        assert_eq!(ticks(3.0, 160.0, 10), vec![5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(ticks(45.0, 90.0, 10), vec![50.0, 60.0, 70.0, 80.0, 90.0]);
        assert_eq!(ticks(1e-3, 1e9, 5), vec![1e-3, 1e0, 1e3, 1e6, 1e9]);
        // Too narrow for two 1..9 x 10^k ticks: linear ones.
        let narrow = ticks(1.1, 1.7, 10);
        assert!(narrow.len() >= 2, "{narrow:?}");
        assert!(narrow.iter().all(|v| (1.1 - 1e-9..=1.7 + 1e-9).contains(v)));
        assert!(ticks(1.0, 10.0, 0).is_empty());
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(0.1 + 0.2), "0.3");
        assert_eq!(tick_label(61.0), "61");
        assert_eq!(tick_label(1234.5678), "1234.6");
        assert_eq!(tick_label(100000.0), "100000");
        assert_eq!(tick_label(2_500_000.0), "2.5e6");
        assert_eq!(tick_label(0.00012), "1.2e-4");
        assert_eq!(tick_label(-0.25), "-0.25");
        assert_eq!(tick_label(1e6), "1e6");
    }
}
