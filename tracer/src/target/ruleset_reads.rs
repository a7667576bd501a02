//! Reading the ruleset's counters without stalling the event loop: a thread of its own runs
//! `iptables-save -c`/`nft list ruleset` when asked, at most every [`MIN_INTERVAL`], and hands
//! back each reading with the monotonic time it started. A packet dropped before a reading
//! started is explained from that reading; requests that arrive while one runs share the next.

use std::{
    sync::mpsc::{self, Receiver, SyncSender, TrySendError},
    time::{Duration, Instant},
};

use super::ruleset::Ruleset;
use crate::events::clock::monotonic_ns;

/// One reading of the ruleset.
pub struct Snapshot {
    /// CLOCK_MONOTONIC when the reading started (what `bpf_ktime_get_ns` reads).
    pub started_ns: u64,
    pub ruleset: Option<Ruleset>,
}

/// Where readings come from.
pub trait Reads: Send {
    /// Asks for a reading (it may come later; asking again before it comes asks once).
    fn request(&mut self);
    /// A reading that has come, if any.
    fn poll(&mut self) -> Option<Snapshot>;
}

/// The least time between two readings.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Readings on a thread of their own.
pub struct Background {
    ask: SyncSender<()>,
    got: Receiver<Snapshot>,
}

impl Background {
    /// Starts the reading thread; it ends when this is dropped.
    pub fn spawn(read: fn() -> Option<Ruleset>) -> std::io::Result<Self> {
        let (ask, asked) = mpsc::sync_channel::<()>(1);
        let (give, got) = mpsc::channel();
        std::thread::Builder::new()
            .name("ruleset-reads".into())
            .spawn(move || {
                let mut last: Option<Instant> = None;
                loop {
                    // The helpers run from here: with this thread's lowered capabilities,
                    // applied even while nothing is asked.
                    crate::probe::privilege::apply_pending();
                    match asked.recv_timeout(Duration::from_millis(200)) {
                        Ok(()) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    if let Some(wait) = last.and_then(|l| MIN_INTERVAL.checked_sub(l.elapsed())) {
                        std::thread::sleep(wait);
                    }
                    // Requests made until now are served by this reading.
                    while asked.try_recv().is_ok() {}
                    last = Some(Instant::now());
                    let started_ns = monotonic_ns();
                    let ruleset = read();
                    if give
                        .send(Snapshot {
                            started_ns,
                            ruleset,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(Self { ask, got })
    }
}

impl Reads for Background {
    fn request(&mut self) {
        // Full: a request is already waiting, and it serves this one too.
        if let Err(TrySendError::Disconnected(_)) = self.ask.try_send(()) {
            log::warn!("the ruleset reading thread has stopped");
        }
    }

    fn poll(&mut self) -> Option<Snapshot> {
        self.got.try_recv().ok()
    }
}

/// Readings made on the spot (tests, and hosts without a ruleset: never asked).
pub struct Inline<F: Fn() -> Option<Ruleset> + Send> {
    read: F,
    ready: Option<Snapshot>,
}

impl<F: Fn() -> Option<Ruleset> + Send> Inline<F> {
    pub fn new(read: F) -> Self {
        Self { read, ready: None }
    }
}

impl<F: Fn() -> Option<Ruleset> + Send> Reads for Inline<F> {
    fn request(&mut self) {
        let started_ns = monotonic_ns();
        self.ready = Some(Snapshot {
            started_ns,
            ruleset: (self.read)(),
        });
    }

    fn poll(&mut self) -> Option<Snapshot> {
        self.ready.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_while_a_reading_runs_share_it_and_readings_are_spaced() {
        fn slow() -> Option<Ruleset> {
            std::thread::sleep(Duration::from_millis(30));
            Some(Ruleset::default())
        }
        let mut b = Background::spawn(slow).expect("thread");
        let t0 = monotonic_ns();
        for _ in 0..50 {
            b.request();
        }
        std::thread::sleep(Duration::from_millis(400));
        let got: Vec<Snapshot> = std::iter::from_fn(|| b.poll()).collect();
        assert!(
            (1..=2).contains(&got.len()),
            "fifty requests, {} readings",
            got.len()
        );
        assert!(got[0].started_ns >= t0);
        if let [a, b] = &got[..] {
            assert!(b.started_ns - a.started_ns >= MIN_INTERVAL.as_nanos() as u64);
        }
    }
}
