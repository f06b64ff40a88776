//! One trace as a text waterfall: one line per span, indented by parentage, with its hop
//! (service and direction), endpoint, attempt, start offset, duration and a bar.
//!
//! ```text
//! trace 5f0c…: 12.41 ms, 9 spans, 3 services
//!     start      dur  |timeline                |
//!   0.00ms  12.41ms  |########################|  lab-client outbound -> b GET 200
//!   0.05ms   5.10ms  |##########              |    attempt 1 -> 127.0.0.1:41003 503 status-503
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::collector::RecordedSpan;

/// Width of the bar, in characters.
pub const BAR: usize = 24;

/// One line of the waterfall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Nesting depth: 0 for a root.
    pub depth: usize,
    pub service: String,
    pub instance: String,
    /// `outbound`, `inbound`, `attempt`, `app` (the service's own server span) or `app call`.
    pub hop: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub start_ms: f64,
    pub duration_ms: f64,
}

/// A trace laid out for reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Waterfall {
    pub trace_id: String,
    pub duration_ms: f64,
    pub spans: usize,
    pub services: usize,
    pub rows: Vec<Row>,
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

fn hop(s: &RecordedSpan) -> String {
    if s.attr("mesh.attempt").is_some() {
        return "attempt".into();
    }
    if let Some(d) = s.attr("mesh.direction") {
        return d.into();
    }
    match s.kind {
        "server" => "app".into(),
        "client" => "app call".into(),
        k => k.into(),
    }
}

fn row(s: &RecordedSpan, depth: usize, t0: u64) -> Row {
    Row {
        depth,
        service: s.service.clone(),
        instance: s.instance.clone(),
        hop: hop(s),
        name: s.name.clone(),
        upstream: s.attr("mesh.upstream").map(str::to_owned),
        endpoint: s.attr("mesh.endpoint").map(str::to_owned),
        attempt: s.attr("mesh.attempt").and_then(|a| a.parse().ok()),
        status: s
            .attr("http.response.status_code")
            .and_then(|a| a.parse().ok()),
        reason: s
            .attr("mesh.reason")
            .or_else(|| s.attr("error.type"))
            .map(str::to_owned),
        start_ms: ms(s.start_unix_nano.saturating_sub(t0)),
        duration_ms: ms(s.duration_ns()),
    }
}

impl Waterfall {
    /// Lays out the spans of one trace: roots (no parent, or a parent not received) in start
    /// order, each followed by its children in start order.
    pub fn of(spans: &[RecordedSpan]) -> Option<Waterfall> {
        let t0 = spans.iter().map(|s| s.start_unix_nano).min()?;
        let t1 = spans.iter().map(|s| s.end_unix_nano).max()?;
        let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut children: BTreeMap<&str, Vec<&RecordedSpan>> = BTreeMap::new();
        let mut roots = Vec::new();
        for s in spans {
            if !s.parent_span_id.is_empty() && ids.contains(s.parent_span_id.as_str()) {
                children
                    .entry(s.parent_span_id.as_str())
                    .or_default()
                    .push(s);
            } else {
                roots.push(s);
            }
        }
        let by_start =
            |v: &mut Vec<&RecordedSpan>| v.sort_by_key(|s| (s.start_unix_nano, s.span_id.clone()));
        by_start(&mut roots);
        children.values_mut().for_each(by_start);
        let mut rows = Vec::with_capacity(spans.len());
        // Depth-first, iteratively (a malformed trace cannot recurse without bound: each span
        // id is visited once).
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(&RecordedSpan, usize)> = roots.iter().rev().map(|s| (*s, 0)).collect();
        while let Some((s, depth)) = stack.pop() {
            if !seen.insert(s.span_id.as_str()) {
                continue;
            }
            rows.push(row(s, depth, t0));
            if let Some(kids) = children.get(s.span_id.as_str()) {
                stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
            }
        }
        let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        Some(Waterfall {
            trace_id: spans[0].trace_id.clone(),
            duration_ms: ms(t1 - t0),
            spans: spans.len(),
            services: services.len(),
            rows,
        })
    }

    /// The text form.
    pub fn render(&self) -> String {
        let mut out = format!(
            "trace {}: {:.2} ms, {} spans, {} services\n     start       dur  |{:BAR$}|\n",
            self.trace_id, self.duration_ms, self.spans, self.services, "timeline"
        );
        let total = self.duration_ms.max(1e-9);
        for r in &self.rows {
            let from = ((r.start_ms / total) * BAR as f64).floor() as usize;
            let to = (((r.start_ms + r.duration_ms) / total) * BAR as f64).ceil() as usize;
            let from = from.min(BAR - 1);
            let to = to.clamp(from + 1, BAR);
            let bar: String = (0..BAR)
                .map(|i| if (from..to).contains(&i) { '#' } else { ' ' })
                .collect();
            let mut label = if r.hop == "attempt" {
                format!("attempt {}", r.attempt.unwrap_or(0))
            } else if r.instance.is_empty() {
                format!("{} {}", r.service, r.hop)
            } else {
                format!("{} ({}) {}", r.service, r.instance, r.hop)
            };
            if let Some(u) = &r.upstream {
                label.push_str(&format!(" -> {u}"));
            }
            if let Some(e) = &r.endpoint {
                label.push_str(&format!(" @ {e}"));
            }
            if r.hop != "attempt" {
                label.push(' ');
                label.push_str(&r.name);
            }
            if let Some(s) = r.status {
                label.push_str(&format!(" {s}"));
            }
            if let Some(reason) = &r.reason {
                label.push_str(&format!(" [{reason}]"));
            }
            out.push_str(&format!(
                "{:>8.2}ms {:>8.2}ms |{bar}|  {:indent$}{label}\n",
                r.start_ms,
                r.duration_ms,
                "",
                indent = 2 * r.depth
            ));
        }
        out
    }
}

/// The slowest trace: the one whose spans cover the longest time.
pub fn slowest(traces: &BTreeMap<String, Vec<RecordedSpan>>) -> Option<Waterfall> {
    let span = |v: &Vec<RecordedSpan>| {
        let t0 = v.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
        let t1 = v.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
        t1.saturating_sub(t0)
    };
    let (_, spans) = traces
        .iter()
        .max_by_key(|(id, v)| (span(v), std::cmp::Reverse(*id)))?;
    Waterfall::of(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start: u64, end: u64, attrs: &[(&str, &str)]) -> RecordedSpan {
        RecordedSpan {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: "GET".into(),
            kind: "client",
            service: "a-sidecar".into(),
            instance: String::new(),
            start_unix_nano: start,
            end_unix_nano: end,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            error: false,
        }
    }

    #[test]
    fn children_follow_their_parent_in_start_order_and_indent() {
        let spans = vec![
            span(
                "c2",
                "r",
                6_000_000,
                9_000_000,
                &[("mesh.attempt", "2"), ("mesh.endpoint", "e2")],
            ),
            span(
                "r",
                "",
                0,
                10_000_000,
                &[("mesh.direction", "outbound"), ("mesh.upstream", "b")],
            ),
            span(
                "c1",
                "r",
                1_000_000,
                5_000_000,
                &[
                    ("mesh.attempt", "1"),
                    ("mesh.reason", "status-503"),
                    ("http.response.status_code", "503"),
                ],
            ),
            span(
                "g",
                "c2",
                7_000_000,
                8_000_000,
                &[("mesh.direction", "inbound")],
            ),
        ];
        let w = Waterfall::of(&spans).expect("a waterfall");
        let order: Vec<(&str, usize)> = w.rows.iter().map(|r| (r.hop.as_str(), r.depth)).collect();
        assert_eq!(
            order,
            [
                ("outbound", 0),
                ("attempt", 1),
                ("attempt", 1),
                ("inbound", 2)
            ],
            "parent first, children by start, grandchild under the second attempt"
        );
        assert_eq!(w.duration_ms, 10.0);
        let text = w.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2 + 4,
            "header, column line, one line per span:\n{text}"
        );
        assert!(
            lines[2].contains("|########################|"),
            "the root spans the bar:\n{text}"
        );
        assert!(
            lines[3].contains("  attempt 1 503 [status-503]"),
            "the failed attempt shows its status and reason:\n{text}"
        );
        assert!(
            lines[5].contains("      a-sidecar inbound"),
            "depth 2 is indented:\n{text}"
        );
    }

    #[test]
    fn the_slowest_trace_is_chosen() {
        let mut traces = BTreeMap::new();
        traces.insert("fast".to_string(), vec![span("a", "", 0, 5, &[])]);
        traces.insert("slow".to_string(), vec![span("b", "", 0, 50, &[])]);
        assert_eq!(slowest(&traces).unwrap().duration_ms, ms(50));
        assert_eq!(
            slowest(&traces).unwrap().rows[0].duration_ms,
            0.0,
            "50 ns rounds to 0 ms"
        );
        assert!(
            slowest(&BTreeMap::new()).is_none(),
            "no trace, no waterfall"
        );
    }
}
