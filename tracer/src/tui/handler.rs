//! Keys → state changes. Pure: no I/O.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{App, Focus};

/// Lines moved by PageUp/PageDown.
const PAGE: isize = 10;

pub fn handle_key(app: &mut App, key: KeyEvent) {
    if key.kind == KeyEventKind::Release {
        return;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'C'))
    {
        app.should_quit = true;
        return;
    }
    if let Some(input) = app.filter_input.as_mut() {
        match key.code {
            KeyCode::Enter => {
                app.filter = app.filter_input.take().unwrap_or_default();
                app.selected_index = 0;
            }
            KeyCode::Esc => app.filter_input = None,
            KeyCode::Backspace => {
                input.pop();
            }
            KeyCode::Char(c) => input.push(c),
            _ => {}
        }
        return;
    }
    if app.show_help {
        match key.code {
            KeyCode::Char('q') => app.should_quit = true,
            KeyCode::Esc | KeyCode::Char('?') => app.show_help = false,
            _ => {}
        }
        return;
    }
    match key.code {
        KeyCode::Char('q') => app.should_quit = true,
        KeyCode::Char('?') => app.show_help = true,
        KeyCode::Char('p' | ' ') => app.set_paused(!app.paused),
        KeyCode::Char('/') => app.filter_input = Some(app.filter.clone()),
        KeyCode::Char('s') => app.sort = app.sort.next(),
        KeyCode::Char('c') => app.clear_counters(),
        KeyCode::Tab => app.focus = app.focus.next(),
        KeyCode::Esc => {
            // Esc with nothing open clears an applied filter.
            app.filter.clear();
        }
        KeyCode::Up | KeyCode::Char('k') => scroll(app, -1),
        KeyCode::Down | KeyCode::Char('j') => scroll(app, 1),
        KeyCode::PageUp => scroll(app, -PAGE),
        KeyCode::PageDown => scroll(app, PAGE),
        KeyCode::Home => scroll(app, isize::MIN / 2),
        KeyCode::End => scroll(app, isize::MAX / 2),
        _ => {}
    }
}

/// Up/down act on the focused panel: the flow selection, or a panel's scroll offset.
fn scroll(app: &mut App, delta: isize) {
    let max = app.panel_len(app.focus).saturating_sub(1);
    // The renderer also keeps the last page full.
    let bump = |v: &mut usize| *v = v.saturating_add_signed(delta).min(max);
    match app.focus {
        Focus::Flows => app.move_selection(delta),
        Focus::Drops => bump(&mut app.scroll_drops),
        Focus::Timeline => bump(&mut app.scroll_timeline),
        Focus::Path => bump(&mut app.scroll_path),
    }
}
