//! Turning ring-buffer records into observations. Records are checked for kind and length
//! before they are read; anything malformed is an error value, never a panic.

use tracer_common::{
    Direction, EventHeader, EventKind, NfEvent, SkbEndEvent, TcHead, SNAP_LEN, TC_HEAD_LEN,
};

use super::packet::{self, Headers};

/// One packet seen at one tc hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcObservation {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel `sk_buff` address: the packet's identity while it lives.
    pub skb: u64,
    pub cpu: u32,
    pub ifindex: u32,
    pub direction: Direction,
    /// Frame length (Ethernet header included).
    pub len: u32,
    pub mark: u32,
    /// Parsed headers, when the frame is IPv4/IPv6.
    pub headers: Option<Headers>,
    /// The captured bytes (up to the snap length).
    pub bytes: Vec<u8>,
}

/// One packet seen by a netfilter observer at one (hook, priority slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfObservation {
    pub ts_ns: u64,
    pub skb: u64,
    pub hook: u8,
    pub pf: u8,
    pub slot: u8,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// Length from the IP header.
    pub len: u32,
    pub mark: u32,
    pub headers: Option<Headers>,
    /// The captured bytes, from the IP header.
    pub bytes: Vec<u8>,
}

/// How a traced packet's life ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// `kfree_skb`: dropped, with an `enum skb_drop_reason` value.
    Drop { reason: u32 },
    /// `consume_skb`: freed normally.
    Consume,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndObservation {
    pub ts_ns: u64,
    pub skb: u64,
    pub kind: EndKind,
    /// Kernel address the free was called from.
    pub location: u64,
    pub ifindex: u32,
    /// Namespace inode of the device the packet was on (0 if none).
    pub netns: u32,
    /// The netfilter hook it was last reported at and the last slot there it passed, if the
    /// freeing CPU had noted it (a hook's later slots report only a changed packet).
    pub passed: Option<(u8, u8)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Tc(TcObservation),
    Nf(NfObservation),
    End(EndObservation),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record of kind {kind} has {got} bytes, expected {want}")]
    Length { kind: u8, got: usize, want: usize },
    #[error("bad field value in record of kind {0}")]
    BadField(u8),
}

fn read<T: Copy>(bytes: &[u8], kind: u8) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if bytes.len() < want {
        return Err(DecodeError::Length {
            kind,
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a repr(C) plain-old-data type; read_unaligned copes
    // with any alignment of the source buffer.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A netfilter record: `NfEvent`, or a shorter one with the same head (`NfHeaders`, the
/// headers alone) whose bytes all fit in the record. Its head and its captured bytes (at most
/// `SNAP_LEN`, as `NfEvent::captured` gives them), read in place: not copied into a zeroed
/// `NfEvent` first (176 bytes zeroed and copied for every record of every packet).
fn read_nf(bytes: &[u8], kind: u8) -> Result<(NfHead, &[u8]), DecodeError> {
    let head = size_of::<NfHead>();
    let want = size_of::<NfEvent>();
    let short = |got| DecodeError::Length { kind, got, want };
    let ev: NfHead = read(bytes, kind).map_err(|_| short(bytes.len()))?;
    let cap = ev.cap_len as usize;
    let captured = if bytes.len() >= want {
        &bytes[head..head + cap.min(SNAP_LEN)]
    } else {
        bytes
            .get(head..head.saturating_add(cap))
            .ok_or_else(|| short(bytes.len()))?
    };
    Ok((ev, captured))
}

/// A netfilter record's head: every field before its bytes.
type NfHead = tracer_common::NfRecord<0>;
const _: () = assert!(size_of::<NfHead>() == std::mem::offset_of!(NfEvent, data));

pub fn decode(bytes: &[u8]) -> Result<Observation, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let kind = bytes[0];
    match EventKind::from_u8(kind) {
        Some(EventKind::Tc) => {
            let ev: TcHead = read(bytes, kind)?;
            let direction = Direction::from_u8(ev.direction).ok_or(DecodeError::BadField(kind))?;
            let want = TC_HEAD_LEN + ev.cap_len as usize;
            let captured = bytes
                .get(TC_HEAD_LEN..want)
                .ok_or(DecodeError::Length {
                    kind,
                    got: bytes.len(),
                    want,
                })?
                .to_vec();
            Ok(Observation::Tc(TcObservation {
                ts_ns: ev.header.ts_ns,
                skb: ev.header.skb,
                cpu: ev.header.cpu,
                ifindex: ev.ifindex,
                direction,
                len: ev.len,
                mark: ev.mark,
                headers: packet::parse_ethernet(&captured),
                bytes: captured,
            }))
        }
        Some(EventKind::Nf) => {
            let (ev, captured) = read_nf(bytes, kind)?;
            let ethertype = match ev.pf {
                2 => packet::ETH_P_IP,
                10 => packet::ETH_P_IPV6,
                _ => 0,
            };
            Ok(Observation::Nf(NfObservation {
                ts_ns: ev.header.ts_ns,
                skb: ev.header.skb,
                hook: ev.hook,
                pf: ev.pf,
                slot: ev.slot,
                in_ifindex: ev.in_ifindex,
                out_ifindex: ev.out_ifindex,
                len: ev.len,
                mark: ev.mark,
                headers: packet::parse_l3(ethertype, captured),
                bytes: captured.to_vec(),
            }))
        }
        Some(k @ (EventKind::Drop | EventKind::Consume)) => {
            let ev: SkbEndEvent = read(bytes, kind)?;
            Ok(Observation::End(EndObservation {
                ts_ns: ev.header.ts_ns,
                skb: ev.header.skb,
                kind: if k == EventKind::Drop {
                    EndKind::Drop { reason: ev.reason }
                } else {
                    EndKind::Consume
                },
                location: ev.location,
                ifindex: ev.ifindex,
                netns: ev.netns,
                passed: (ev.passed != 0).then_some((ev.nf_hook, ev.nf_slot)),
            }))
        }
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

/// A record's common head, as the kernel fills it (for the tests and the user-space cost's
/// synthetic records).
pub fn record_header(kind: EventKind, cpu: u32, ts_ns: u64, skb: u64) -> EventHeader {
    EventHeader {
        kind: kind as u8,
        _pad: [0; 3],
        cpu,
        ts_ns,
        skb,
    }
}

/// A tc record as the kernel sends it: the head, then the captured bytes (for the tests and
/// the user-space cost's synthetic records).
pub fn tc_record(frame: &[u8], skb: u64, ifindex: u32, direction: Direction) -> Vec<u8> {
    let head = TcHead {
        header: record_header(EventKind::Tc, 1, 1_000, skb),
        ifindex,
        len: frame.len() as u32,
        cap_len: frame.len() as u32,
        mark: 0,
        protocol: 0x0800u16.to_be(),
        direction: direction as u8,
        _pad: [0; 5],
    };
    // SAFETY: TcHead is repr(C) plain-old-data.
    let mut bytes =
        unsafe { std::slice::from_raw_parts((&head as *const TcHead).cast::<u8>(), TC_HEAD_LEN) }
            .to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{NfHeaders, NF_HEADERS, SNAP_LEN};

    #[test]
    fn decodes_a_tc_record() {
        let frame = packet::tests::tcp_syn_v4();
        let bytes = tc_record(&frame, 0xffff_8881_0000_1000, 21, Direction::Ingress);
        let Ok(Observation::Tc(o)) = decode(&bytes) else {
            panic!("not a tc observation")
        };
        assert_eq!(o.skb, 0xffff_8881_0000_1000);
        assert_eq!(o.ifindex, 21);
        assert_eq!(o.direction, Direction::Ingress);
        assert_eq!(o.len, 54);
        assert_eq!(o.bytes, frame);
        let h = o.headers.expect("headers");
        assert_eq!(h.destination().to_string(), "198.51.100.2:8080");
    }

    #[test]
    fn decodes_netfilter_and_drop_records() {
        let frame = packet::tests::tcp_syn_v4();
        let mut data = [0u8; SNAP_LEN];
        data[..40].copy_from_slice(&frame[14..54]);
        let nf = NfEvent {
            header: record_header(EventKind::Nf, 0, 5, 9),
            hook: 2,
            pf: 2,
            slot: 4,
            _pad: 0,
            in_ifindex: 143,
            out_ifindex: 142,
            len: 40,
            cap_len: 40,
            mark: 0,
            data,
        };
        // SAFETY: NfEvent is repr(C) plain-old-data.
        let bytes = unsafe {
            std::slice::from_raw_parts((&nf as *const NfEvent).cast::<u8>(), size_of::<NfEvent>())
        };
        let Ok(Observation::Nf(o)) = decode(bytes) else {
            panic!("not a netfilter observation")
        };
        assert_eq!(
            (o.hook, o.slot, o.in_ifindex, o.out_ifindex),
            (2, 4, 143, 142)
        );
        let h = o.headers.expect("IP parsed from the network header");
        assert_eq!(h.source().to_string(), "172.18.0.2:41234");
        assert_eq!(o.bytes, &frame[14..54]);
        // A whole record whose head claims more bytes than a record holds gives all it holds.
        let big = NfEvent {
            cap_len: SNAP_LEN as u32 + 1,
            ..nf
        };
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts((&big as *const NfEvent).cast::<u8>(), size_of::<NfEvent>())
        };
        let Ok(Observation::Nf(b)) = decode(bytes) else {
            panic!("not a netfilter observation")
        };
        assert_eq!(b.bytes, data);

        // The headers alone (`NfHeaders`): the same observation from a shorter record.
        let mut small = NfHeaders {
            header: nf.header,
            hook: nf.hook,
            pf: nf.pf,
            slot: nf.slot,
            _pad: 0,
            in_ifindex: nf.in_ifindex,
            out_ifindex: nf.out_ifindex,
            len: nf.len,
            cap_len: nf.cap_len,
            mark: nf.mark,
            data: [0; NF_HEADERS],
        };
        small.data.copy_from_slice(&data[..NF_HEADERS]);
        // SAFETY: NfHeaders is repr(C) plain-old-data.
        let short = unsafe {
            std::slice::from_raw_parts(
                (&small as *const NfHeaders).cast::<u8>(),
                size_of::<NfHeaders>(),
            )
        };
        assert_eq!(decode(short), Ok(Observation::Nf(o.clone())));
        // A short record whose head promises more bytes than it has is refused, as is one cut
        // inside its head.
        small.cap_len = NF_HEADERS as u32 + 1;
        // SAFETY: as above.
        let lying = unsafe {
            std::slice::from_raw_parts(
                (&small as *const NfHeaders).cast::<u8>(),
                size_of::<NfHeaders>(),
            )
        };
        assert!(matches!(decode(lying), Err(DecodeError::Length { .. })));
        assert!(matches!(
            decode(&short[..40]),
            Err(DecodeError::Length { .. })
        ));

        let end = SkbEndEvent {
            header: record_header(EventKind::Drop, 0, 6, 9),
            location: 0xffff_ffff_8100_0000,
            reason: 12,
            ifindex: 0,
            netns: 0,
            nf_hook: 2,
            nf_slot: 4,
            passed: 1,
            _pad: 0,
        };
        // SAFETY: SkbEndEvent is repr(C) plain-old-data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&end as *const SkbEndEvent).cast::<u8>(),
                size_of::<SkbEndEvent>(),
            )
        };
        let Ok(Observation::End(e)) = decode(bytes) else {
            panic!("not an end observation")
        };
        assert_eq!(e.kind, EndKind::Drop { reason: 12 });
        assert_eq!(e.location, 0xffff_ffff_8100_0000);
        assert_eq!(
            e.passed,
            Some((2, 4)),
            "the last slot it passed, at FORWARD"
        );
    }

    #[test]
    fn rejects_short_unknown_and_corrupt_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut bytes = tc_record(&[9; 10], 1, 1, Direction::Egress);
        bytes[0] = 99;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));
        bytes[0] = EventKind::Tc as u8;
        let cut = bytes[..40].to_vec();
        assert!(matches!(decode(&cut), Err(DecodeError::Length { .. })));
        // The head promises 10 captured bytes: a record cut inside them is rejected.
        let short = bytes[..TC_HEAD_LEN + 4].to_vec();
        assert!(matches!(decode(&short), Err(DecodeError::Length { .. })));
        let dir_at = std::mem::offset_of!(TcHead, direction);
        bytes[dir_at] = 7;
        assert_eq!(decode(&bytes), Err(DecodeError::BadField(1)));
    }
}
