//! Horizontal bar charts as inline SVG, drawn by the server: no script, no library, and
//! they stretch with the page.

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
/// screen readers. Coordinates across are percentages and there is no `viewBox`, so the
/// text keeps its CSS size at every width: each row is its label and value on one line,
/// the bar under them.
pub(crate) fn bars(title: &str, bars: &[Bar], max: Option<f64>) -> String {
    const ROW: usize = 40;
    let max = max
        .unwrap_or_else(|| bars.iter().map(|b| b.value).fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    let height = ROW * bars.len().max(1) + 4;
    let mut svg = format!(
        r#"<svg class="chart" width="100%" height="{height}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(title)
    );
    if bars.is_empty() {
        svg.push_str(r#"<text x="8" y="22" class="label">nothing to show</text>"#);
    }
    for (i, b) in bars.iter().enumerate() {
        let y = ROW * i + 4;
        // 97 %: the bar starts 8 px in and must end inside the chart.
        let w = (b.value / max).clamp(0.0, 1.0) * 97.0;
        svg.push_str(&format!(
            r#"<g><title>{label}: {text}</title><text x="8" y="{ty}" class="label">{label}</text><text x="99%" y="{ty}" class="value" text-anchor="end">{text}</text><rect x="8" y="{ry}" width="{w:.1}%" height="12" rx="3" class="bar {class}"/></g>"#,
            label = esc(&b.label),
            text = esc(&b.text),
            ty = y + 14,
            ry = y + 20,
            class = b.class,
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
        assert!(
            svg.contains(r#"width="97.0%""#) && svg.contains(r#"width="48.5%""#),
            "{svg}"
        );
    }
}
