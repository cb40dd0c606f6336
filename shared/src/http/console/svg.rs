//! Usage charts drawn as SVG on the server: one stacked bar per day, a
//! segment per series (model and class), a y axis of round ticks, and a legend
//! with each series' total. Every segment and legend entry carries its exact
//! figures in `data-*` attributes and a `<title>`, so the page (and its tests)
//! can read the numbers the picture was drawn from. Text is XML-escaped.

use std::fmt::Write;

use super::chart::{Chart, Class, Metric};

pub const WIDTH: f64 = 760.0;
pub const LEFT: f64 = 76.0;
const RIGHT: f64 = 16.0;
pub const TOP: f64 = 36.0;
pub const PLOT_HEIGHT: f64 = 200.0;
const AXIS: f64 = 28.0;
const LEGEND_ROW: f64 = 18.0;
/// The widest a day's bar is drawn (a short range would draw slabs).
const MAX_BAR: f64 = 48.0;

/// Escapes text for an XML attribute or element.
pub fn escape(s: &str) -> String {
    crate::tenancy::text::escape_markup(s)
}

/// `1234567` as `1,234,567`.
pub fn count(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Micro-dollars as dollars, exactly: `480` is `$0.00048`, `1500000` is `$1.50`.
pub fn usd(micros: u64) -> String {
    let mut frac = format!("{:06}", micros % 1_000_000);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("${}.{frac}", count(micros / 1_000_000))
}

/// A count for an axis: exact below 10,000, else in k, M or B.
fn compact(v: u64) -> String {
    for (unit, suffix) in [(1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")] {
        if v >= 10_000 && v >= unit {
            let tenths = v / (unit / 10);
            return if tenths % 10 == 0 {
                format!("{}{suffix}", tenths / 10)
            } else {
                format!("{}.{}{suffix}", tenths / 10, tenths % 10)
            };
        }
    }
    count(v)
}

/// A value as the chart's metric states it.
pub fn stated(metric: Metric, v: u64) -> String {
    match metric {
        Metric::Requests => format!("{} requests", count(v)),
        Metric::Tokens => format!("{} tokens", count(v)),
        Metric::Cost => usd(v),
    }
}

fn tick_label(metric: Metric, v: u64) -> String {
    match metric {
        Metric::Cost => usd(v),
        _ => compact(v),
    }
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `max` (1 for 0).
pub fn nice_ceiling(max: u64) -> u64 {
    let mut p: u64 = 1;
    while p.saturating_mul(10) <= max && p < u64::MAX / 10 {
        p *= 10;
    }
    [1, 2, 5, 10]
        .iter()
        .map(|f| p.saturating_mul(*f))
        .find(|c| *c >= max)
        .unwrap_or(u64::MAX)
}

/// Divisions of the axis that keep every tick a whole number.
fn divisions(top: u64) -> u64 {
    [4, 5, 2].into_iter().find(|d| top % d == 0).unwrap_or(1)
}

fn palette(class: Class) -> &'static [&'static str] {
    match class {
        Class::Embeddings => &["#2563eb", "#60a5fa", "#1e3a8a", "#93c5fd"],
        Class::Chat => &["#16a34a", "#4ade80", "#14532d", "#86efac"],
        Class::Batch => &["#ea580c", "#fb923c", "#9a3412", "#fdba74"],
        Class::Other => &["#6b7280", "#9ca3af"],
    }
}

/// Each series' colour: its class's palette, in model order.
fn colours(chart: &Chart) -> Vec<&'static str> {
    let mut seen: Vec<Class> = Vec::new();
    chart
        .series
        .iter()
        .map(|s| {
            let n = seen.iter().filter(|c| **c == s.class).count();
            seen.push(s.class);
            let p = palette(s.class);
            p[n % p.len()]
        })
        .collect()
}

/// The chart as an SVG document titled `title`.
pub fn render(chart: &Chart, title: &str) -> String {
    let metric = chart.metric.as_str();
    let rows = chart.series.len().max(1) as f64;
    let legend_top = TOP + PLOT_HEIGHT + AXIS + 8.0;
    let height = legend_top + rows * LEGEND_ROW + 8.0;
    let (from, to) = (
        chart.days.first().map_or("", String::as_str),
        chart.days.last().map_or("", String::as_str),
    );
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-labelledby="chart-{metric}-title chart-{metric}-desc" data-metric="{metric}" data-total="{total}" data-from="{from}" data-to="{to}" font-family="system-ui, sans-serif" font-size="12" fill="#1f2937">"##,
        total = chart.total(),
    );
    let _ = write!(
        out,
        r#"<title id="chart-{metric}-title">{}</title><desc id="chart-{metric}-desc">{}</desc>"#,
        escape(title),
        escape(&description(chart)),
    );
    let _ = write!(
        out,
        r#"<text class="heading" x="8" y="20" font-size="14" font-weight="600">{}</text>"#,
        escape(title)
    );
    let top = nice_ceiling(chart.day_totals().into_iter().max().unwrap_or(0));
    axis(&mut out, chart.metric, top);
    bars(&mut out, chart, top);
    legend(&mut out, chart, legend_top);
    out.push_str("</svg>");
    out
}

fn description(chart: &Chart) -> String {
    if chart.series.is_empty() {
        return "No usage in this range.".into();
    }
    let parts: Vec<String> = chart
        .series
        .iter()
        .map(|s| {
            format!(
                "{} ({}): {}",
                s.model,
                s.class.as_str(),
                stated(chart.metric, s.total())
            )
        })
        .collect();
    format!("Totals: {}.", parts.join("; "))
}

fn axis(out: &mut String, metric: Metric, top: u64) {
    let right = WIDTH - RIGHT;
    let n = divisions(top);
    for i in 0..=n {
        let v = top / n * i;
        let y = TOP + PLOT_HEIGHT - PLOT_HEIGHT * i as f64 / n as f64;
        let stroke = if i == 0 { "#6b7280" } else { "#e5e7eb" };
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{right}" y1="{y:.2}" y2="{y:.2}" stroke="{stroke}"/><text class="tick" x="{:.2}" y="{:.2}" text-anchor="end" data-value="{v}">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            escape(&tick_label(metric, v)),
        );
    }
}

fn bars(out: &mut String, chart: &Chart, top: u64) {
    let n = chart.days.len().max(1);
    let slot = (WIDTH - LEFT - RIGHT) / n as f64;
    let bar = (slot * 0.7).clamp(1.0, slot.max(1.0)).min(MAX_BAR);
    let colours = colours(chart);
    let step = n.div_ceil(10);
    for (i, day) in chart.days.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = TOP + PLOT_HEIGHT;
        for (s, colour) in chart.series.iter().zip(&colours) {
            let v = s.values[i];
            if v == 0 {
                continue;
            }
            let h = PLOT_HEIGHT * v as f64 / top as f64;
            base -= h;
            let _ = write!(
                out,
                r#"<rect class="bar" x="{x:.2}" y="{base:.2}" width="{bar:.2}" height="{h:.2}" fill="{colour}" data-day="{day}" data-model="{model}" data-class="{class}" data-value="{v}"><title>{day} · {model} · {class}: {stated}</title></rect>"#,
                model = escape(&s.model),
                class = s.class.as_str(),
                stated = escape(&stated(chart.metric, v)),
            );
        }
        if i % step == 0 {
            let _ = write!(
                out,
                r#"<text class="day" x="{:.2}" y="{:.2}" text-anchor="middle">{}</text>"#,
                LEFT + slot * (i as f64 + 0.5),
                TOP + PLOT_HEIGHT + 16.0,
                escape(day.get(5..).unwrap_or(day)),
            );
        }
    }
    if chart.series.is_empty() {
        let _ = write!(
            out,
            r##"<text class="empty" x="{:.2}" y="{:.2}" text-anchor="middle" fill="#6b7280">No usage in this range</text>"##,
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
            TOP + PLOT_HEIGHT / 2.0,
        );
    }
}

fn legend(out: &mut String, chart: &Chart, legend_top: f64) {
    for (row, (s, colour)) in chart.series.iter().zip(colours(chart)).enumerate() {
        let y = legend_top + LEGEND_ROW * row as f64;
        let total = s.total();
        let _ = write!(
            out,
            r#"<g class="legend-entry" data-model="{model}" data-class="{class}" data-total="{total}"><rect x="{LEFT}" y="{y:.2}" width="12" height="12" fill="{colour}"/><text x="{:.2}" y="{:.2}">{model} · {class}: {stated}</text></g>"#,
            LEFT + 18.0,
            y + 10.0,
            model = escape(&s.model),
            class = s.class.as_str(),
            stated = escape(&stated(chart.metric, total)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::chart::Series;
    use super::*;

    /// The value of `attr` in each element that starts with `open`.
    fn attrs(svg: &str, open: &str, attr: &str) -> Vec<String> {
        svg.split(open)
            .skip(1)
            .map(|el| {
                let at = el.find(&format!(" {attr}=\"")).unwrap() + attr.len() + 3;
                el[at..at + el[at..].find('"').unwrap()].to_string()
            })
            .collect()
    }

    fn chart(metric: Metric, series: Vec<(&str, Class, Vec<u64>)>) -> Chart {
        Chart {
            metric,
            days: vec![
                "2026-11-01".into(),
                "2026-11-02".into(),
                "2026-11-03".into(),
            ],
            series: series
                .into_iter()
                .map(|(m, class, values)| Series {
                    model: m.into(),
                    class,
                    values,
                })
                .collect(),
        }
    }

    #[test]
    fn bars_are_as_tall_as_their_values_and_stack_per_day() {
        let c = chart(
            Metric::Requests,
            vec![
                ("emb", Class::Embeddings, vec![10, 0, 4]),
                ("emb", Class::Batch, vec![5, 0, 0]),
            ],
        );
        let svg = render(&c, "Requests");
        // The tallest day (15) rounds up to an axis of 20: 10 units per 100 px.
        assert_eq!(
            attrs(&svg, "<text class=\"tick\"", "data-value"),
            ["0", "5", "10", "15", "20"]
        );
        let heights: Vec<f64> = attrs(&svg, "<rect class=\"bar\"", "height")
            .iter()
            .map(|h| h.parse().unwrap())
            .collect();
        assert_eq!(heights, [100.0, 50.0, 40.0]);
        let ys: Vec<f64> = attrs(&svg, "<rect class=\"bar\"", "y")
            .iter()
            .map(|h| h.parse().unwrap())
            .collect();
        // Stacked from the axis up: the batch segment sits on the direct one.
        let floor = TOP + PLOT_HEIGHT;
        assert_eq!(ys, [floor - 100.0, floor - 150.0, floor - 40.0]);
        assert_eq!(
            attrs(&svg, "<rect class=\"bar\"", "data-value"),
            ["10", "5", "4"]
        );
        assert_eq!(
            attrs(&svg, "<rect class=\"bar\"", "data-day"),
            ["2026-11-01", "2026-11-01", "2026-11-03"]
        );
        assert_eq!(
            attrs(&svg, "<g class=\"legend-entry\"", "data-total"),
            ["14", "5"]
        );
        assert!(
            svg.contains(">emb · embeddings: 14 requests</text>"),
            "{svg}"
        );
        assert!(svg.contains(">emb · batch: 5 requests</text>"));
        assert!(svg.contains("data-total=\"19\""));
        assert!(svg.contains(">11-02</text>"));
        assert!(svg.contains("<text class=\"heading\" x=\"8\" y=\"20\" font-size=\"14\" font-weight=\"600\">Requests</text>"));
        // A short range draws bars, not slabs.
        assert_eq!(attrs(&svg, "<rect class=\"bar\"", "width"), ["48.00"; 3]);
        // Both classes draw in their own colours.
        let fills = attrs(&svg, "<rect class=\"bar\"", "fill");
        assert_ne!(fills[0], fills[1]);
    }

    #[test]
    fn cost_reads_in_dollars_exactly_and_text_is_escaped() {
        let c = chart(
            Metric::Cost,
            vec![("<b>&\"x\"", Class::Chat, vec![0, 1_234_567, 480])],
        );
        let svg = render(&c, "Cost & more");
        assert!(svg.contains("<title id=\"chart-cost-title\">Cost &amp; more</title>"));
        assert!(
            svg.contains("&lt;b&gt;&amp;&quot;x&quot; · chat: $1.235047</text>"),
            "{svg}"
        );
        assert!(!svg.contains("<b>"));
        assert_eq!(
            attrs(&svg, "<text class=\"tick\"", "data-value"),
            ["0", "500000", "1000000", "1500000", "2000000"]
        );
        assert!(svg.contains(">$0.50</text>") && svg.contains(">$2.00</text>"));
        assert!(svg.contains("$0.00048</title>"));
        let heights: Vec<f64> = attrs(&svg, "<rect class=\"bar\"", "height")
            .iter()
            .map(|h| h.parse().unwrap())
            .collect();
        assert_eq!(heights, [123.46, 0.05]);
    }

    #[test]
    fn an_empty_range_says_so() {
        let svg = render(&chart(Metric::Tokens, vec![]), "Tokens");
        assert!(svg.contains("No usage in this range"));
        assert!(!svg.contains("<rect class=\"bar\""));
        assert!(svg.contains("data-total=\"0\""));
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(480), "$0.00048");
        assert_eq!(usd(1_500_000), "$1.50");
        assert_eq!(usd(12_345_678_901), "$12,345.678901");
        assert_eq!(compact(9_999), "9,999");
        assert_eq!(compact(250_000), "250k");
        assert_eq!(compact(2_500_000), "2.5M");
        for (max, top) in [
            (0, 1),
            (1, 1),
            (3, 5),
            (10, 10),
            (11, 20),
            (15, 20),
            (51, 100),
        ] {
            assert_eq!(nice_ceiling(max), top, "{max}");
        }
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }
}
