//! Making sense of observations: hops of one packet, NAT between hops, packets into flows.

pub mod flow;
pub mod nat;
pub mod packet;
