//! The event loop: one `tokio::select!` over the terminal's events, a render tick and the
//! feed. Packets only change the state; the screen is drawn on ticks (and after a key), so the
//! frame rate stays steady whatever the packet rate.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyEventKind};
use futures_util::{Stream, StreamExt};
use ratatui::backend::Backend;
use ratatui::Terminal;
use tokio::sync::mpsc::Receiver;

use super::app::App;
use super::{handler, ui, Feed, PANICKED};

/// Feed items handled per wake-up before the loop looks at keys and ticks again.
const FEED_BATCH: usize = 1024;

fn draw<B: Backend>(terminal: &mut Terminal<B>, app: &App) -> io::Result<()> {
    terminal
        .draw(|f| ui::render(f, app))
        .map(|_| ())
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Runs until the user quits, the terminal's event stream ends, or SIGTERM/SIGINT arrives.
/// Generic over the backend and the event stream so that tests can drive it.
pub async fn run_loop<B, S>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    mut feed: Receiver<Feed>,
    mut events: S,
    tick: Duration,
) -> io::Result<()>
where
    B: Backend,
    S: Stream<Item = io::Result<Event>> + Unpin,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut feed_open = true;
    draw(terminal, app)?;
    while !app.should_quit {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                    handler::handle_key(app, k);
                    if !app.should_quit {
                        draw(terminal, app)?;
                    }
                }
                Some(Ok(Event::Resize(..))) => draw(terminal, app)?,
                Some(Ok(_)) => {}
                Some(Err(e)) => app.message(format!("terminal event error: {e}")),
                None => app.should_quit = true,
            },
            item = feed.recv(), if feed_open => match item {
                Some(item) => {
                    let now = Instant::now();
                    app.apply(item, now);
                    for _ in 1..FEED_BATCH {
                        match feed.try_recv() {
                            Ok(item) => app.apply(item, now),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    feed_open = false;
                    if app.finished.is_none() {
                        app.message("the tracer stopped sending events".to_owned());
                    }
                }
            },
            _ = ticker.tick() => {
                if PANICKED.load(Ordering::Relaxed) {
                    app.should_quit = true;
                } else {
                    app.tick(Instant::now());
                    draw(terminal, app)?;
                }
            }
            _ = sigterm.recv() => app.should_quit = true,
            _ = sigint.recv() => app.should_quit = true,
        }
    }
    Ok(())
}
