//! Turning ring-buffer records into observations. Records are checked for kind and length
//! before they are read; anything malformed is an error value, never a panic.

use tracer_common::{Direction, EventHeader, EventKind, TcEvent};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Tc(TcObservation),
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

pub fn decode(bytes: &[u8]) -> Result<Observation, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let kind = bytes[0];
    match EventKind::from_u8(kind) {
        Some(EventKind::Tc) => {
            let ev: TcEvent = read(bytes, kind)?;
            let direction = Direction::from_u8(ev.direction).ok_or(DecodeError::BadField(kind))?;
            let captured = ev.captured().to_vec();
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
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::SNAP_LEN;

    fn as_bytes(ev: &TcEvent) -> Vec<u8> {
        // SAFETY: TcEvent is repr(C) plain-old-data.
        unsafe {
            std::slice::from_raw_parts((ev as *const TcEvent).cast::<u8>(), size_of::<TcEvent>())
        }
        .to_vec()
    }

    pub fn tc_event(frame: &[u8], skb: u64, ifindex: u32, direction: Direction) -> TcEvent {
        let mut data = [0u8; SNAP_LEN];
        let n = frame.len().min(SNAP_LEN);
        data[..n].copy_from_slice(&frame[..n]);
        TcEvent {
            header: EventHeader {
                kind: EventKind::Tc as u8,
                _pad: [0; 3],
                cpu: 1,
                ts_ns: 1_000,
                skb,
            },
            ifindex,
            len: frame.len() as u32,
            cap_len: n as u32,
            mark: 0,
            protocol: 0x0008,
            direction: direction as u8,
            _pad: [0; 5],
            data,
        }
    }

    #[test]
    fn decodes_a_tc_record() {
        let frame = packet::tests::tcp_syn_v4();
        let bytes = as_bytes(&tc_event(
            &frame,
            0xffff_8881_0000_1000,
            21,
            Direction::Ingress,
        ));
        let Observation::Tc(o) = decode(&bytes).expect("decodes");
        assert_eq!(o.skb, 0xffff_8881_0000_1000);
        assert_eq!(o.ifindex, 21);
        assert_eq!(o.direction, Direction::Ingress);
        assert_eq!(o.len, 54);
        assert_eq!(o.bytes, frame);
        let h = o.headers.expect("headers");
        assert_eq!(h.destination().to_string(), "198.51.100.2:8080");
    }

    #[test]
    fn rejects_short_unknown_and_corrupt_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut bytes = as_bytes(&tc_event(&[], 1, 1, Direction::Egress));
        bytes[0] = 99;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));
        bytes[0] = EventKind::Tc as u8;
        let cut = bytes[..40].to_vec();
        assert!(matches!(decode(&cut), Err(DecodeError::Length { .. })));
        let dir_at = std::mem::offset_of!(TcEvent, direction);
        bytes[dir_at] = 7;
        assert_eq!(decode(&bytes), Err(DecodeError::BadField(1)));
    }
}
