//! Horizontal bar charts as inline SVG, drawn by the server: no script, no library, and
//! they scale with the page (a `viewBox` and `width: 100%`).

use super::view::esc;

/// One bar: a label, its value, and the text shown at its end.
pub(crate) struct Bar {
    pub label: String,
    pub value: f64,
    pub text: String,
    /// CSS class of the bar (`hosted`, `cached`, `ok`, `warn`).
    pub class: &'static str,
}

/// A chart of `bars` scaled to `max` (the largest value when `None`). `title` names it for
/// screen readers.
pub(crate) fn bars(title: &str, bars: &[Bar], max: Option<f64>) -> String {
    const ROW: f64 = 28.0;
    const LABEL: f64 = 190.0;
    const WIDTH: f64 = 640.0;
    const TEXT: f64 = 110.0;
    let max = max
        .unwrap_or_else(|| bars.iter().map(|b| b.value).fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    let height = ROW * bars.len().max(1) as f64 + 4.0;
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{t}" preserveAspectRatio="xMinYMin meet"><title>{t}</title>"#,
        t = esc(title)
    );
    if bars.is_empty() {
        svg.push_str(r#"<text x="0" y="18" class="label">nothing to show</text>"#);
    }
    let span = WIDTH - LABEL - TEXT;
    for (i, b) in bars.iter().enumerate() {
        let y = ROW * i as f64 + 2.0;
        let w = (b.value / max).clamp(0.0, 1.0) * span;
        // Labels longer than the column are cut; the full text is in the bar's <title>.
        let label: String = if b.label.chars().count() > 26 {
            let tail: String = b.label.chars().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
            format!("…{tail}")
        } else {
            b.label.clone()
        };
        svg.push_str(&format!(
            r#"<g><title>{full}: {text}</title><text x="{lx}" y="{ty}" class="label" text-anchor="end">{label}</text><rect x="{LABEL}" y="{ry}" width="{w:.1}" height="{bh}" rx="3" class="bar {class}"/><text x="{vx:.1}" y="{ty}" class="value">{text}</text></g>"#,
            full = esc(&b.label),
            text = esc(&b.text),
            label = esc(&label),
            lx = LABEL - 8.0,
            ty = y + 17.0,
            ry = y + 4.0,
            bh = ROW - 8.0,
            class = b.class,
            vx = LABEL + w + 6.0,
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let svg = bars(
            "t",
            &[
                Bar {
                    label: "<a>".into(),
                    value: 2.0,
                    text: "2".into(),
                    class: "hosted",
                },
                Bar {
                    label: "b".into(),
                    value: 1.0,
                    text: "1".into(),
                    class: "cached",
                },
            ],
            None,
        );
        assert!(svg.contains("&lt;a&gt;") && !svg.contains("<a>"));
        assert!(svg.contains(r#"width="340.0""#) && svg.contains(r#"width="170.0""#), "{svg}");
    }
}
