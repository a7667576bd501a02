//! The dashboard's state. Pure: no I/O, time is passed in (an injectable clock for tests).
//! `data` keeps counting all the time; what is drawn is a `View` built from it, frozen while
//! the view is paused.

use std::collections::VecDeque;
use std::time::Instant;

use super::model::Data;
use super::stats::{FlowKey, TimelinePacket};
use super::view::{FlowRow, View};
use super::Feed;

/// Status messages kept (shown in the status area and the help overlay).
const MAX_MESSAGES: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    Flows,
    Drops,
    Timeline,
    Path,
}

impl Focus {
    pub fn next(self) -> Self {
        match self {
            Focus::Flows => Focus::Drops,
            Focus::Drops => Focus::Timeline,
            Focus::Timeline => Focus::Path,
            Focus::Path => Focus::Flows,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Packets,
    Bytes,
    Drops,
    LastSeen,
}

impl SortKey {
    pub fn next(self) -> Self {
        match self {
            SortKey::Packets => SortKey::Bytes,
            SortKey::Bytes => SortKey::Drops,
            SortKey::Drops => SortKey::LastSeen,
            SortKey::LastSeen => SortKey::Packets,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Packets => "packets",
            SortKey::Bytes => "bytes",
            SortKey::Drops => "drops",
            SortKey::LastSeen => "last seen",
        }
    }
}

pub struct App {
    pub title: String,
    pub data: Data,
    /// The frozen view while paused.
    pub frozen: Option<Box<View>>,
    /// The selected flow's timeline as it was when the view was paused.
    pub frozen_timeline: Option<(FlowKey, Vec<TimelinePacket>)>,
    pub paused: bool,
    pub focus: Focus,
    pub sort: SortKey,
    /// The applied filter (empty: none).
    pub filter: String,
    /// The filter being typed (Some while the prompt is open).
    pub filter_input: Option<String>,
    pub show_help: bool,
    pub should_quit: bool,
    pub selected: Option<FlowKey>,
    pub selected_index: usize,
    /// Scroll offsets of the drops, timeline and path panels.
    pub scroll_drops: usize,
    pub scroll_timeline: usize,
    pub scroll_path: usize,
    pub messages: VecDeque<String>,
    pub finished: Option<String>,
}

impl App {
    pub fn new(title: String) -> Self {
        App {
            title,
            data: Data::default(),
            frozen: None,
            frozen_timeline: None,
            paused: false,
            focus: Focus::Flows,
            sort: SortKey::Packets,
            filter: String::new(),
            filter_input: None,
            show_help: false,
            should_quit: false,
            selected: None,
            selected_index: 0,
            scroll_drops: 0,
            scroll_timeline: 0,
            scroll_path: 0,
            messages: VecDeque::new(),
            finished: None,
        }
    }

    pub fn apply(&mut self, feed: Feed, now: Instant) {
        match feed {
            // Text from elsewhere (recordings, the ruleset, Docker) is made safe before it is
            // drawn.
            Feed::Packet(mut v) => {
                crate::output::terminal::clean_packet(&mut v);
                self.data.packet(&v)
            }
            Feed::Flows(mut lines) => {
                for l in &mut lines {
                    for s in [&mut l.container, &mut l.local, &mut l.remote] {
                        crate::output::terminal::clean(s);
                    }
                }
                self.data.flows(&lines)
            }
            Feed::Counters(c) => self.data.counters(c, now),
            Feed::Lost(n) => self.data.lost = n,
            Feed::NotShown(n) => self.data.not_shown = n,
            Feed::Evicted(n) => self.data.kernel_evicted = n,
            Feed::RingFill(f) => self.data.ring_fill = f,
            Feed::Status(s) => self.message(s),
            Feed::Recording { path, bytes } => self.data.recording = Some((path, bytes)),
            Feed::Finished(s) => {
                self.message(format!("finished: {s}"));
                self.finished = Some(s);
            }
        }
    }

    pub fn message(&mut self, mut s: String) {
        crate::output::terminal::clean(&mut s);
        if self.messages.len() >= MAX_MESSAGES {
            self.messages.pop_front();
        }
        self.messages.push_back(s);
    }

    pub fn tick(&mut self, now: Instant) {
        self.data.tick(now);
    }

    /// The view to draw: frozen while paused, else built from the live data.
    pub fn view(&self) -> std::borrow::Cow<'_, View> {
        match &self.frozen {
            Some(v) => std::borrow::Cow::Borrowed(v),
            None => std::borrow::Cow::Owned(View::build(&self.data)),
        }
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if paused {
            self.frozen = Some(Box::new(View::build(&self.data)));
            self.frozen_timeline = self.selected.as_ref().and_then(|k| {
                self.data
                    .flows
                    .get(k)
                    .map(|f| (k.clone(), f.recent.iter().cloned().collect()))
            });
        } else {
            self.frozen = None;
            self.frozen_timeline = None;
        }
    }

    /// "c": new baselines; a paused view is re-frozen so the clear shows.
    pub fn clear_counters(&mut self) {
        self.data.clear();
        self.selected = None;
        self.selected_index = 0;
        self.scroll_drops = 0;
        self.scroll_timeline = 0;
        if self.paused {
            self.set_paused(true);
        }
    }

    /// The flows table as shown: filtered, then sorted by the sort key (descending).
    pub fn visible_flows<'v>(&self, view: &'v View) -> Vec<&'v FlowRow> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<&FlowRow> = view
            .flows
            .iter()
            .filter(|f| needle.is_empty() || f.line.to_lowercase().contains(&needle))
            .collect();
        let key = |f: &FlowRow| match self.sort {
            SortKey::Packets => f.total_packets(),
            SortKey::Bytes => f.total_bytes(),
            SortKey::Drops => f.drops,
            SortKey::LastSeen => f.last_seq,
        };
        rows.sort_by(|a, b| key(b).cmp(&key(a)).then(b.last_seq.cmp(&a.last_seq)));
        rows
    }

    /// Index of the selected flow in `rows`: by key when it is still there, else clamped.
    pub fn selection_in(&self, rows: &[&FlowRow]) -> Option<usize> {
        if rows.is_empty() {
            return None;
        }
        if let Some(k) = &self.selected {
            if let Some(i) = rows.iter().position(|r| &r.key == k) {
                return Some(i);
            }
        }
        Some(self.selected_index.min(rows.len() - 1))
    }

    /// Moves the flow selection by `delta`, within bounds.
    pub fn move_selection(&mut self, delta: isize) {
        let view = self.view();
        let rows = self.visible_flows(&view);
        let Some(cur) = self.selection_in(&rows) else {
            return;
        };
        let next = cur.saturating_add_signed(delta).min(rows.len() - 1);
        let key = rows[next].key.clone();
        drop(rows);
        drop(view);
        self.selected_index = next;
        self.scroll_timeline = 0;
        if self.paused {
            self.frozen_timeline = self
                .data
                .flows
                .get(&key)
                .map(|f| (key.clone(), f.recent.iter().cloned().collect()));
        }
        self.selected = Some(key);
    }

    /// The timeline of the selected flow (newest packet first).
    pub fn timeline(&self, key: &FlowKey) -> Vec<TimelinePacket> {
        if let Some((k, t)) = &self.frozen_timeline {
            if k == key {
                return t.iter().rev().cloned().collect();
            }
        }
        self.data
            .flows
            .get(key)
            .map(|f| f.recent.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// The selected flow's key as shown (the stored key, or the row its index falls on).
    pub fn selected_key(&self) -> Option<FlowKey> {
        let view = self.view();
        let rows = self.visible_flows(&view);
        self.selection_in(&rows).map(|i| rows[i].key.clone())
    }

    /// How many lines the drops, timeline or path panel holds (for clamping its scroll).
    pub fn panel_len(&self, focus: Focus) -> usize {
        match focus {
            Focus::Flows => self.view().flows.len(),
            Focus::Drops => self.view().drops.len(),
            Focus::Path => self.view().path.len(),
            Focus::Timeline => self.selected_key().map_or(0, |k| {
                self.timeline(&k).iter().map(|p| 1 + p.notes.len()).sum()
            }),
        }
    }
}
