//! The pieces every panel is drawn with: its frame, its table head, the width that shows more.

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Row};

/// Widths from which the extra columns (bytes/s, container, NAT, per-hop offsets) appear.
pub const WIDE: u16 = 110;

pub fn panel(title: String, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::Cyan)
    };
    Block::new()
        .borders(Borders::TOP)
        .border_style(style)
        .title(Span::styled(title, style))
}

pub fn head(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().copied())
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
}
