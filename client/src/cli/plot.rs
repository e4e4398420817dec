//! `paxoskv bench --plot FILE.svg`: the latency histogram per operation kind and the
//! throughput over time, as one hand-written SVG (no plotting dependency; any browser shows it).

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// How often the throughput is sampled during a run.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Most throughput samples kept (a day at one per 500 ms); later ones are dropped.
const MAX_SAMPLES: usize = 172_800;
/// Latency buckets of the histogram panel (logarithmic between the fastest and slowest).
const LATENCY_BUCKETS: u32 = 40;

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const COLORS: [&str; 2] = ["#16a34a", "#2563eb"];

/// Operations per second at the end of each sample interval, seconds since the start.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Throughput {
    pub(crate) points: Vec<(f64, f64)>,
    /// Seconds of warm-up at the start (shaded: not measured).
    pub(crate) warmup_s: f64,
}

/// Samples `completed()` (a running count of finished operations) every [`SAMPLE_EVERY`]
/// from `start` until `end`.
pub(crate) async fn sample(
    start: Instant,
    end: Instant,
    warmup: Duration,
    completed: impl Fn() -> u64,
) -> Throughput {
    let mut ticker = tokio::time::interval_at(start + SAMPLE_EVERY, SAMPLE_EVERY);
    let mut out = Throughput {
        points: Vec::new(),
        warmup_s: warmup.as_secs_f64(),
    };
    let (mut last_count, mut last_at) = (completed(), start);
    while last_at < end && out.points.len() < MAX_SAMPLES {
        let now = ticker.tick().await;
        let count = completed();
        let dt = (now - last_at).as_secs_f64().max(1e-3);
        out.points.push((
            (now - start).as_secs_f64(),
            count.saturating_sub(last_count) as f64 / dt,
        ));
        (last_count, last_at) = (count, now);
    }
    out
}

/// One latency series: a kind's name and its histogram (microseconds).
pub(crate) struct LatencySeries<'a> {
    pub(crate) name: &'a str,
    pub(crate) histogram: &'a Histogram<u64>,
}

/// Writes the SVG to `path`.
pub(crate) fn write(
    path: &Path,
    title: &str,
    latency: &[LatencySeries<'_>],
    throughput: &Throughput,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(path, svg(title, latency, throughput))
        .with_context(|| format!("cannot write the plot to {}", path.display()))
}

/// The whole picture: title, latency histogram panel, throughput panel.
pub(crate) fn svg(title: &str, latency: &[LatencySeries<'_>], throughput: &Throughput) -> String {
    let height = 2.0 * PANEL_HEIGHT + 70.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    latency_panel(&mut s, 30.0, latency);
    throughput_panel(&mut s, 50.0 + PANEL_HEIGHT, throughput);
    s.push_str("</svg>\n");
    s
}

/// Bucket edges in microseconds, logarithmic from `lo` to `hi` (at least one bucket).
fn edges(lo: u64, hi: u64) -> Vec<u64> {
    let (lo, hi) = (lo.max(1) as f64, hi.max(lo.max(1) + 1) as f64);
    let ratio = (hi / lo).powf(1.0 / f64::from(LATENCY_BUCKETS));
    let mut e: Vec<u64> = (0..=LATENCY_BUCKETS)
        .map(|i| (lo * ratio.powi(i as i32)).round() as u64)
        .collect();
    e.dedup();
    e
}

fn latency_panel(s: &mut String, top: f64, series: &[LatencySeries<'_>]) {
    let used: Vec<&LatencySeries<'_>> = series.iter().filter(|l| !l.histogram.is_empty()).collect();
    let lo = used.iter().map(|l| l.histogram.min()).min().unwrap_or(1);
    let hi = used.iter().map(|l| l.histogram.max()).max().unwrap_or(2);
    let edges = edges(lo, hi);
    let counts: Vec<Vec<u64>> = used
        .iter()
        .map(|l| {
            edges
                .windows(2)
                .map(|w| {
                    l.histogram
                        .count_between(w[0], w[1].saturating_sub(1).max(w[0]))
                })
                .collect()
        })
        .collect();
    let max = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let axis = Axis::new(top, "latency (log scale)", "operations", max);
    axis.draw(s, &format_us(lo), &format_us(hi));
    let buckets = edges.len().saturating_sub(1).max(1) as f64;
    let slot = axis.width() / buckets;
    let bar = slot / used.len().max(1) as f64;
    for (k, (l, c)) in used.iter().zip(&counts).enumerate() {
        let color = COLORS[k % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<g id="latency-{}" fill="{color}"><title>{} latency</title>"#,
            escape(l.name),
            escape(l.name)
        );
        for (i, &n) in c.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let h = axis.height() * n as f64 / max;
            let x = LEFT + i as f64 * slot + k as f64 * bar;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"/>"#,
                axis.bottom() - h,
                bar.max(0.5)
            );
        }
        s.push_str("</g>\n");
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.0}" fill="{color}">{} ({} ops, p50 {}, p99 {})</text>"#,
            LEFT + 8.0,
            top + 26.0 + 14.0 * k as f64,
            escape(l.name),
            l.histogram.len(),
            format_us(l.histogram.value_at_quantile(0.5)),
            format_us(l.histogram.value_at_quantile(0.99))
        );
    }
}

fn throughput_panel(s: &mut String, top: f64, t: &Throughput) {
    let max = t.points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let span_s = t.points.last().map_or(1.0, |p| p.0).max(1e-3);
    let axis = Axis::new(top, "time since start", "ops/s", max);
    axis.draw(s, "0 s", &format!("{span_s:.1} s"));
    let x = |sec: f64| LEFT + axis.width() * sec / span_s;
    if t.warmup_s > 0.0 {
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#e5e7eb"><title>warm-up (not measured)</title></rect>"##,
            axis.top(),
            (x(t.warmup_s.min(span_s)) - LEFT).max(0.0),
            axis.height()
        );
    }
    let points: Vec<String> = t
        .points
        .iter()
        .map(|&(sec, rate)| {
            format!(
                "{:.1},{:.1}",
                x(sec),
                axis.bottom() - axis.height() * rate / max
            )
        })
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline id="throughput" fill="none" stroke="#dc2626" stroke-width="1.5" points="{}"><title>throughput (all operations, warm-up included)</title></polyline>"##,
        points.join(" ")
    );
}

/// A panel's frame: `top` of the plot area, labels, and the value at the top of the y axis.
struct Axis {
    top: f64,
    x_label: &'static str,
    y_label: &'static str,
    y_max: f64,
}

impl Axis {
    fn new(top: f64, x_label: &'static str, y_label: &'static str, y_max: f64) -> Axis {
        Axis {
            top: top + 10.0,
            x_label,
            y_label,
            y_max,
        }
    }
    fn top(&self) -> f64 {
        self.top
    }
    fn height(&self) -> f64 {
        PANEL_HEIGHT - 40.0
    }
    fn bottom(&self) -> f64 {
        self.top + self.height()
    }
    fn width(&self) -> f64 {
        WIDTH - LEFT - RIGHT
    }

    fn draw(&self, s: &mut String, x_from: &str, x_to: &str) {
        let (b, r) = (self.bottom(), WIDTH - RIGHT);
        let _ = writeln!(
            s,
            r##"<path d="M{LEFT},{:.1} V{b:.1} H{r}" fill="none" stroke="#6b7280"/>"##,
            self.top
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 4.0,
            self.top + 8.0,
            fmt_value(self.y_max)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{b:.1}" text-anchor="end">0</text>"#,
            LEFT - 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
            self.top + self.height() / 2.0,
            self.top + self.height() / 2.0,
            self.y_label
        );
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.1}">{}</text><text x="{r}" y="{:.1}" text-anchor="end">{}</text>"#,
            b + 14.0,
            escape(x_from),
            b + 14.0,
            escape(x_to)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + self.width() / 2.0,
            b + 14.0,
            self.x_label
        );
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn format_us(us: u64) -> String {
    super::bench::format_us(us)
}

/// Text safe inside SVG (XML) elements and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        for &v in values {
            h.record(v).expect("in bounds");
        }
        h
    }

    #[test]
    fn the_plot_is_well_formed_svg_with_both_series() {
        let get = histogram(&[200, 250, 300, 900, 5_000]);
        let put = histogram(&[1_000, 1_200, 40_000]);
        let throughput = Throughput {
            points: vec![(0.5, 100.0), (1.0, 180.0), (1.5, 175.0)],
            warmup_s: 0.5,
        };
        let series = [
            LatencySeries {
                name: "get",
                histogram: &get,
            },
            LatencySeries {
                name: "put",
                histogram: &put,
            },
        ];
        let text = svg("bench <put & get>", &series, &throughput);
        let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let by_id = |id: &str| doc.descendants().find(|n| n.attribute("id") == Some(id));
        for kind in ["latency-get", "latency-put"] {
            let bars = by_id(kind)
                .unwrap_or_else(|| panic!("{kind} missing"))
                .children()
                .filter(|n| n.has_tag_name("rect"))
                .count();
            assert!(bars >= 2, "{kind}: {bars} bars");
        }
        let line = by_id("throughput").expect("throughput line");
        let points = line.attribute("points").expect("points").split(' ').count();
        assert_eq!(points, 3);
        assert!(text.contains("bench &lt;put &amp; get&gt;"));
    }

    #[test]
    fn an_empty_run_still_plots() {
        let empty = histogram(&[]);
        let series = [LatencySeries {
            name: "put",
            histogram: &empty,
        }];
        let text = svg("nothing", &series, &Throughput::default());
        roxmltree::Document::parse(&text).expect("well-formed XML");
    }

    #[test]
    fn latency_buckets_are_logarithmic_and_increasing() {
        let e = edges(100, 100_000);
        assert_eq!(e.first(), Some(&100));
        assert_eq!(e.last(), Some(&100_000));
        assert!(e.windows(2).all(|w| w[0] < w[1]));
        assert!(edges(5, 5).len() >= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn throughput_is_sampled_from_a_running_count() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let end = start + Duration::from_secs(2);
        let counter = done.clone();
        let bumper = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                counter.fetch_add(10, Ordering::Relaxed);
            }
        });
        let t = sample(start, end, Duration::ZERO, || done.load(Ordering::Relaxed)).await;
        bumper.await.expect("bumper");
        assert_eq!(t.points.len(), 4);
        // 10 operations per 100 ms.
        assert!(
            t.points.iter().all(|p| (p.1 - 100.0).abs() <= 20.0),
            "{t:?}"
        );
    }
}
