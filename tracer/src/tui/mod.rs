//! The live dashboard (`flowtrace --container X` on a terminal): the path as a diagram with
//! per-hop counters and rates, a flows table, a drops panel, the selected flow's timeline and a
//! status line. `run` is the entry; the session sends it `Feed` items.
//!
//! Layout: `model` counts into `stats` (pure), `app` is the state (pure) and `view` the
//! snapshot drawn from it, `handler` maps keys to state changes (pure), `ui` + `panels` + `fmt`
//! draw (pure given a Frame), `event` is the loop. The terminal is restored on every exit path: a guard's Drop, and a panic hook.

mod app;
mod blocks;
mod event;
#[cfg(test)]
pub(crate) mod fixtures;
mod fmt;
mod handler;
mod model;
mod panels;
mod stats;
#[cfg(test)]
mod tests;
mod ui;
mod view;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossterm::{cursor, execute, terminal};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

/// How often the screen is drawn.
const TICK: Duration = Duration::from_millis(250);

/// Set by the panic hook: the loop then quits (a panic elsewhere already restored the terminal).
static PANICKED: AtomicBool = AtomicBool::new(false);

/// What the session sends the dashboard.
#[derive(Debug)]
pub enum Feed {
    /// One traced packet (exactly what `--json` prints for type "packet").
    Packet(Box<crate::model::Packet>),
    /// The core's flows that changed (the flow table the summary and `--flows` count): the
    /// dashboard's flow counts are these, never its own.
    Flows(Vec<crate::model::FlowLine>),
    /// Kernel per-hop counters (exact, from per-CPU maps), summed over CPUs: one entry per
    /// (interface, direction) flowtrace attached to.
    Counters(Vec<HopCount>),
    /// Total events lost so far (ring buffer full).
    Lost(u64),
    /// What user space received and did not show, so far (untraced, filtered, malformed,
    /// completed early, flows evicted: the summary's `discarded`, added up).
    NotShown(u64),
    /// Entries the kernel evicted from its tables to make room, so far (the summary's
    /// `kernel_evicted`, added up).
    Evicted(u64),
    /// Ring-buffer fill in percent (0–100), None when unknown.
    RingFill(Option<f32>),
    /// A status line to show (attachments, fallbacks, warnings).
    Status(String),
    /// Recording file and its size in bytes.
    Recording { path: String, bytes: u64 },
    /// The tracer is done (duration/count reached, or an error): show it, keep the screen until q.
    Finished(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HopCount {
    pub iface: String,
    pub role: String,
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
}

fn restore_terminal() {
    // Best effort: nothing may be printed while (or instead of) restoring.
    let _ = terminal::disable_raw_mode();
    let mut out = io::stdout();
    let _ = execute!(out, terminal::LeaveAlternateScreen, cursor::Show);
    let _ = out.flush();
}

/// Restores the terminal when dropped (quit, error, or unwinding).
struct TerminalGuard;

/// The dashboard as the pipeline's sink: each shown packet goes to its feed.
impl crate::sink::Sink for tokio::sync::mpsc::Sender<Feed> {
    fn packet(
        &mut self,
        _: &crate::correlate::explain::Explained,
        p: &crate::model::Packet,
        _: &mut dyn Write,
    ) -> io::Result<()> {
        // A dashboard that cannot keep up skips packets; its counters stay exact.
        let _ = self.try_send(Feed::Packet(Box::new(p.clone())));
        Ok(())
    }

    fn owns_terminal(&self) -> bool {
        true
    }
}

impl TerminalGuard {
    fn enter() -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        // From here on the guard exists, so a failure below still restores.
        let guard = TerminalGuard;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Installs a panic hook that restores the terminal before the previous hook prints;
/// returns the previous hook so that it can be put back.
fn install_panic_hook() -> Arc<PanicHook> {
    let prev: Arc<PanicHook> = Arc::new(std::panic::take_hook());
    let chained = Arc::clone(&prev);
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::Relaxed);
        restore_terminal();
        chained(info);
    }));
    prev
}

/// Runs the dashboard until the user quits; restores the terminal on every exit path.
/// For the fuzz target: a line of a recording (any text) shown the way `flowtrace read` and
/// `read --tui` show it: rendered as text, fed to the dashboard with its flow, and the
/// dashboard drawn at two sizes. It must never panic.
pub fn show_untrusted_line(line: &str) {
    let Ok(crate::model::Line::Packet(p)) = crate::model::Line::parse(line) else {
        return;
    };
    let mut clean = p.clone();
    crate::output::terminal::clean_packet(&mut clean);
    let _ = crate::output::text::packet(&clean);
    let now = std::time::Instant::now();
    let mut app = app::App::new("fuzz".into());
    let mut flows = crate::correlate::flow::FlowTable::new(4);
    flows.keep_changes();
    if let Some(s) = crate::correlate::flow::Sample::of(&p) {
        flows.add(s);
    }
    let clock = crate::events::clock::WallClock::wall();
    let lines = flows
        .take_changed()
        .into_iter()
        .map(|(k, s)| crate::model::flow(k, s, &clock))
        .collect();
    app.apply(Feed::Packet(Box::new(p)), now);
    app.apply(Feed::Flows(lines), now);
    for (w, h) in [(80, 24), (20, 8)] {
        let Ok(mut term) = Terminal::new(ratatui::backend::TestBackend::new(w, h));
        let _ = term.draw(|f| ui::render(f, &app));
    }
}

pub async fn run(feed: tokio::sync::mpsc::Receiver<Feed>, title: String) -> io::Result<()> {
    PANICKED.store(false, Ordering::Relaxed);
    let prev_hook = install_panic_hook();
    let result = async {
        let _guard = TerminalGuard::enter()?;
        let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        term.clear()?;
        let mut app = app::App::new(title);
        let events = crossterm::event::EventStream::new();
        event::run_loop(&mut term, &mut app, feed, events, TICK).await
    }
    .await;
    std::panic::set_hook(Box::new(move |info| prev_hook(info)));
    result
}
