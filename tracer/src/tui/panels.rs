//! The four panels: path diagram, flows, drops, and the selected flow's timeline. Long text
//! is clipped to its cell, never wrapped into other panels.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::app::{App, Focus};
use super::blocks::{head, panel, WIDE};
use super::fmt::{bytes, count, ns, plural, rate};
use super::stats::{FlowKey, TimelinePacket};
use super::view::{Cnt, FlowRow, View};

pub fn render_path(f: &mut Frame, app: &App, view: &View, area: Rect) {
    let wide = area.width >= WIDE;
    let visible = area.height.saturating_sub(2) as usize;
    let skip = app.scroll_path.min(view.path.len().saturating_sub(visible));
    let more = view.path.len().saturating_sub(skip + visible);
    let more = if more > 0 {
        format!("· {more} more ↓ ")
    } else {
        String::new()
    };
    let title = format!(" Path: container eth0 ⇄ hops  →out ←in  (netfilter: from events) {more}");
    let block = panel(title, app.focus == Focus::Path);
    if view.path.is_empty() {
        f.render_widget(
            Paragraph::new("waiting for attachments and packets…").block(block),
            area,
        );
        return;
    }
    let dash = || "-".to_owned();
    let dir_cells = |c: &Option<Cnt>| -> Vec<String> {
        match c {
            Some(c) if wide => vec![
                count(c.packets),
                bytes(c.bytes),
                rate(c.pps),
                format!("{}/s", bytes(c.bps as u64)),
            ],
            Some(c) => vec![count(c.packets), bytes(c.bytes), rate(c.pps)],
            None if wide => vec![dash(), dash(), dash(), dash()],
            None => vec![dash(), dash(), dash()],
        }
    };
    let rows = view.path.iter().skip(skip).map(|r| {
        let mut cells = vec![Cell::from(r.name.clone()), Cell::from(r.kind.clone())];
        cells.extend(dir_cells(&r.out).into_iter().map(Cell::from));
        cells.extend(dir_cells(&r.inn).into_iter().map(Cell::from));
        let d = if r.drops > 0 {
            Style::new().fg(Color::Red).bold()
        } else {
            Style::new()
        };
        cells.push(Cell::from(count(r.drops)).style(d));
        if wide {
            cells.push(Cell::from(count(r.lost)));
        }
        let style = if r.netfilter {
            Style::new().fg(Color::Magenta)
        } else {
            Style::new()
        };
        Row::new(cells).style(style)
    });
    let (header, widths) = if wide {
        (
            head(&[
                "hop", "kind", "→pkts", "bytes", "pkt/s", "B/s", "←pkts", "bytes", "pkt/s", "B/s",
                "drops", "lost",
            ]),
            vec![17, 14, 8, 7, 7, 8, 8, 7, 7, 8, 6, 6],
        )
    } else {
        (
            head(&[
                "hop", "kind", "→pkts", "bytes", "/s", "←pkts", "bytes", "/s", "drops",
            ]),
            vec![16, 10, 6, 6, 6, 6, 6, 6, 5],
        )
    };
    // The hop name takes the spare width.
    let widths: Vec<Constraint> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            if i == 0 {
                Constraint::Min(w)
            } else {
                Constraint::Length(w)
            }
        })
        .collect();
    f.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

/// Renders the flows table; returns the selected flow's key and display line.
pub fn render_flows(
    f: &mut Frame,
    app: &App,
    view: &View,
    area: Rect,
) -> Option<(FlowKey, String)> {
    let wide = area.width >= WIDE;
    let rows = app.visible_flows(view);
    let filter = if app.filter.is_empty() {
        String::new()
    } else {
        format!(" · filter \"{}\"", app.filter)
    };
    let title = format!(
        " Flows {}/{} · sort: {}{filter} ",
        rows.len(),
        view.flows.len(),
        app.sort.name()
    );
    let block = panel(title, app.focus == Focus::Flows);
    let sel = app.selection_in(&rows);
    let selected = sel.map(|i| (rows[i].key.clone(), flow_line(rows[i])));
    let table_rows = rows.iter().map(|r| {
        let d = if r.drops > 0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        let time = if wide {
            r.last_time.clone()
        } else {
            r.last_time.chars().take(8).collect()
        };
        let mut cells = Vec::new();
        if wide {
            cells.push(Cell::from(r.key.container.clone()));
        }
        cells.push(Cell::from(flow_line(r)));
        if wide {
            cells.push(Cell::from(r.nat.clone().unwrap_or_default()));
        }
        cells.extend([
            Cell::from(count(r.packets[0])),
            Cell::from(count(r.packets[1])),
            Cell::from(bytes(r.total_bytes())),
            Cell::from(count(r.drops)).style(d),
            Cell::from(time),
        ]);
        Row::new(cells)
    });
    let (header, widths) = if wide {
        (
            head(&[
                "container",
                "flow",
                "NAT seen",
                "→pkts",
                "←pkts",
                "bytes",
                "drops",
                "last seen",
            ]),
            vec![
                Constraint::Length(14),
                Constraint::Min(30),
                Constraint::Length(22),
            ],
        )
    } else {
        (
            head(&["flow", "→pkts", "←pkts", "bytes", "drops", "last"]),
            vec![Constraint::Min(20)],
        )
    };
    let mut widths = widths;
    widths.extend([6, 6, 7, 5, if wide { 12 } else { 8 }].map(Constraint::Length));
    let table = Table::new(table_rows, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶");
    let mut state = TableState::default().with_selected(sel);
    f.render_stateful_widget(table, area, &mut state);
    selected
}

fn flow_line(r: &FlowRow) -> String {
    format!(
        "{} {} → {}",
        r.key.proto.to_uppercase(),
        r.key.local,
        r.key.remote
    )
}

pub fn render_drops(f: &mut Frame, app: &App, view: &View, area: Rect) {
    let total: u64 = view.drops.iter().map(|d| d.count).sum();
    let block = panel(
        format!(" Drops {total} ({}) ", plural(view.drops.len(), "kind")),
        app.focus == Focus::Drops,
    );
    if view.drops.is_empty() {
        f.render_widget(Paragraph::new("no drops seen").block(block), area);
        return;
    }
    let visible = area.height.saturating_sub(2) as usize;
    let skip = app
        .scroll_drops
        .min(view.drops.len().saturating_sub(visible));
    let rows = view.drops.iter().skip(skip).map(|d| {
        Row::new([
            Cell::from(d.reason.clone()).style(Style::new().fg(Color::Red)),
            Cell::from(d.at.clone()),
            Cell::from(count(d.count)),
            Cell::from(d.last_time.chars().take(8).collect::<String>()),
            Cell::from(d.rule.clone().unwrap_or_default()),
        ])
    });
    let widths = [15, 15, 6, 8]
        .map(Constraint::Length)
        .into_iter()
        .chain([Constraint::Min(10)]);
    let header = head(&["reason", "where", "count", "last", "rule"]);
    f.render_widget(Table::new(rows, widths).header(header).block(block), area);
}

pub fn render_timeline(f: &mut Frame, app: &App, selected: Option<(FlowKey, String)>, area: Rect) {
    let focused = app.focus == Focus::Timeline;
    let Some((key, line)) = selected else {
        f.render_widget(
            Paragraph::new("select a flow (↑/↓)").block(panel(" Timeline ".into(), focused)),
            area,
        );
        return;
    };
    let block = panel(format!(" Timeline {line} (newest first) "), focused);
    let lines: Vec<Line> = app
        .timeline(&key)
        .iter()
        .flat_map(|p| packet_lines(p, area.width))
        .collect();
    let visible = area.height.saturating_sub(1) as usize;
    let skip = app.scroll_timeline.min(lines.len().saturating_sub(visible)) as u16;
    f.render_widget(Paragraph::new(lines).block(block).scroll((skip, 0)), area);
}

/// A packet's header line (its hops as a chain; per-hop offsets on wide screens), then its
/// NAT rewrites and drop.
fn packet_lines(p: &TimelinePacket, area_w: u16) -> Vec<Line<'static>> {
    let chain: Vec<String> = p
        .hops
        .iter()
        .map(|h| {
            if area_w >= 140 && h.at_ns > 0 {
                format!("{} +{}", h.name, ns(h.at_ns))
            } else {
                h.name.clone()
            }
        })
        .collect();
    let total = p.hops.last().map(|h| ns(h.at_ns)).unwrap_or_default();
    let flags = if p.flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", p.flags)
    };
    let arrow = if p.way == "in" { "←" } else { "→" };
    let mut end = chain.join(" › ");
    if p.dropped {
        end.push_str(" ✗");
    }
    let head_style = if p.dropped {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    let mut out = vec![Line::from(vec![
        Span::styled(
            format!("{} {arrow}{} {flags} {}B ", p.time, p.way, p.len),
            head_style.bold(),
        ),
        Span::raw(format!(" {end}  {total}")),
    ])];
    for n in &p.notes {
        let style = if n.starts_with('✗') || n.starts_with("  rule") {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Green)
        };
        out.push(Line::styled(format!("    {n}"), style));
    }
    out
}
