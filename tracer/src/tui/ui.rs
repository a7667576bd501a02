//! Renders the state with ratatui widgets. Pure given a Frame: long text is clipped to its
//! cell, never wrapped into other panels.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use super::app::App;
use super::fmt::{bytes, count, rate, tail};
use super::panels::{render_drops, render_flows, render_path, render_timeline};
use super::view::View;

pub fn render(f: &mut Frame, app: &App) {
    let area = f.area();
    let view = app.view();
    let body = area.height.saturating_sub(3);
    let path_rows = view.path.len().max(1) as u16;
    // The path gets what it needs, leaving at least 11 lines to flows, drops and timeline.
    let path_h = (path_rows + 2).min(body.saturating_sub(11).max(4));
    let rest = body.saturating_sub(path_h);
    let flows_h = (rest * 2 / 5).max(4);
    let drops_h = (rest / 4).max(3);
    let [title, path, flows, drops, timeline, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(path_h),
        Constraint::Length(flows_h),
        Constraint::Length(drops_h),
        Constraint::Min(0),
        Constraint::Length(2),
    ])
    .areas(area);
    render_title(f, app, title);
    render_path(f, app, &view, path);
    let selected = render_flows(f, app, &view, flows);
    render_drops(f, app, &view, drops);
    render_timeline(f, app, selected, timeline);
    render_status(f, app, &view, status);
    if app.show_help {
        render_help(f, app, area);
    }
}

fn render_title(f: &mut Frame, app: &App, area: Rect) {
    let state = match (&app.finished, app.paused) {
        (Some(_), _) => Span::styled(" FINISHED ", Style::new().fg(Color::Black).bg(Color::Blue)),
        (None, true) => Span::styled(" PAUSED ", Style::new().fg(Color::Black).bg(Color::Yellow)),
        (None, false) => Span::styled(" LIVE ", Style::new().fg(Color::Black).bg(Color::Green)),
    };
    let [left, right] = Layout::horizontal([Constraint::Min(0), Constraint::Length(7)]).areas(area);
    f.render_widget(
        Line::from(vec![
            state,
            Span::raw(" "),
            Span::styled(app.title.clone(), Style::new().bold()),
        ]),
        left,
    );
    f.render_widget(Line::from("? help").right_aligned(), right);
}

/// Red once something was lost.
fn lost_style_for(n: u64) -> Style {
    if n > 0 {
        Style::new().fg(Color::Red).bold()
    } else {
        Style::new()
    }
}

fn render_status(f: &mut Frame, app: &App, view: &View, area: Rect) {
    let sep = || Span::styled(" │ ", Style::new().fg(Color::DarkGray));
    let lost_style = lost_style_for(view.lost);
    let mut spans = vec![
        Span::raw(format!("{} pkts", count(view.packets))),
        sep(),
        Span::raw(format!("{} ev/s", rate(view.events_per_s))),
        sep(),
        Span::styled(format!("lost {}", count(view.lost)), lost_style),
        sep(),
        Span::raw(format!("not shown {}", count(view.not_shown))),
        sep(),
        Span::raw(match view.ring_fill {
            Some(p) => format!("ring {p:.0}%"),
            None => "ring n/a".to_owned(),
        }),
    ];
    // Only once it happens: the kernel's tables were full and it made room.
    if view.kernel_evicted > 0 {
        spans.push(sep());
        spans.push(Span::styled(
            format!("evicted {}", count(view.kernel_evicted)),
            lost_style_for(view.kernel_evicted),
        ));
    }
    if let Some((path, size)) = &view.recording {
        spans.push(sep());
        spans.push(Span::styled(
            format!("● rec {} {}", tail(path, 40), bytes(*size)),
            Style::new().fg(Color::Red),
        ));
    }
    let second = if let Some(input) = &app.filter_input {
        Line::from(vec![
            Span::styled(
                format!("filter: {input}▏"),
                Style::new().fg(Color::Yellow).bold(),
            ),
            Span::raw("  (Enter apply, Esc cancel)"),
        ])
    } else if let Some(done) = &app.finished {
        Line::styled(
            format!("finished: {done}  (q to quit)"),
            Style::new().fg(Color::Blue).bold(),
        )
    } else {
        Line::styled(
            app.messages.back().cloned().unwrap_or_default(),
            Style::new().fg(Color::DarkGray),
        )
    };
    let [a, b] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    f.render_widget(Line::from(spans), a);
    f.render_widget(second, b);
}

const KEYS: [(&str, &str); 11] = [
    ("q, Ctrl-C", "quit"),
    ("p, space", "pause the view (counting goes on)"),
    ("/", "filter flows (Enter applies, Esc cancels)"),
    ("↑/↓, j/k", "select flow / scroll the focused panel"),
    ("PgUp/PgDn", "move by 10"),
    ("Tab", "switch focus: flows, drops, timeline, path"),
    ("s", "cycle sort: packets, bytes, drops, last seen"),
    ("c", "clear counters (view baselines only)"),
    ("Esc", "close help/filter; clear an applied filter"),
    ("?", "this help"),
    ("", "rates: per second; netfilter rows: from events"),
];

fn render_help(f: &mut Frame, app: &App, area: Rect) {
    let w = area.width.saturating_sub(4).min(72);
    let max_h = area.height.saturating_sub(2).min(30);
    let mut lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, d)| {
            Line::from(vec![
                Span::styled(format!(" {k:<11}"), Style::new().fg(Color::Yellow).bold()),
                Span::raw(*d),
            ])
        })
        .collect();
    let room = (max_h as usize).saturating_sub(lines.len() + 3);
    if room > 0 && !app.messages.is_empty() {
        lines.push(Line::styled(" messages:", Style::new().bold()));
        let skip = app.messages.len().saturating_sub(room);
        lines.extend(
            app.messages
                .iter()
                .skip(skip)
                .map(|m| Line::raw(format!(" {m}"))),
        );
    }
    // As tall as its content.
    let h = (lines.len() as u16 + 2).min(max_h);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    f.render_widget(Clear, r);
    let block = Block::bordered()
        .title(" keys (Esc or ? to close) ")
        .border_style(Style::new().fg(Color::Yellow));
    f.render_widget(Paragraph::new(lines).block(block), r);
}
