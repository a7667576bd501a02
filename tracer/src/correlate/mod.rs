//! Making sense of observations: hops of one packet, NAT between hops, packets into flows.

pub mod decisions;
pub mod explain;
pub mod flow;
pub mod nat;
pub mod packet;
pub mod traversal;
pub mod verdict;
