//! Presenting what was traced: text for people, JSON lines for programs.

pub mod json;
pub mod raw;
pub mod text;

use crate::{
    correlate::{
        flow::{FlowKey, FlowStats},
        packet::{Packet, Points},
    },
    probe::counters::HopTotals,
};

/// Counts for the final summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub packets: u64,
    pub flows: u64,
    pub drops: u64,
    pub lost: u64,
    pub hops: Vec<HopTotals>,
}

/// Where traced packets go: text or JSON lines.
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn packet(
        &self,
        p: &Packet,
        points: &Points,
        clock: &crate::events::clock::WallClock,
    ) -> String {
        match self {
            Self::Text => text::packet(p, points, clock),
            Self::Json => json::packet(p, points, clock).to_string(),
        }
    }

    pub fn flow(
        &self,
        k: &FlowKey,
        s: &FlowStats,
        clock: &crate::events::clock::WallClock,
    ) -> String {
        match self {
            Self::Text => text::flow(k, s, clock),
            Self::Json => json::flow(k, s, clock).to_string(),
        }
    }

    pub fn lost(&self, count: u64) -> String {
        match self {
            Self::Text => format!("!! {count} events lost (ring buffer full); per-hop counters still count every packet"),
            Self::Json => serde_json::json!({"type": "lost", "count": count}).to_string(),
        }
    }

    pub fn summary(&self, s: &Summary) -> String {
        match self {
            Self::Text => text::summary(s),
            Self::Json => json::summary(s).to_string(),
        }
    }
}
