//! Making sense of observations: hops of one packet, NAT between hops, packets into flows.

pub mod decisions;
pub mod explain;
pub mod flow;
pub mod nat;
pub mod packet;
pub mod traversal;
pub mod verdict;

/// Maps keyed by what packets carry (tuples, fingerprints, interface names), looked up for
/// every hop of every shown packet: hashed with foldhash under a seed drawn for each process,
/// several times cheaper than std's SipHash on keys this short, and still not predictable
/// by whoever sends the packets (whose keys could otherwise be made to collide).
pub type NetMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type NetSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
