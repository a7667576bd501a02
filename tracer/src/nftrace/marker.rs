//! The marking table: an `inet` nftables table owned by our netlink socket
//! (NFT_TABLE_F_OWNER), whose base chains set `meta nftrace` on the packets of the targets.
//! The kernel deletes an owned table when the socket that created it closes, so the table
//! cannot outlive the process, even after SIGKILL. Only the owning socket may change or
//! delete it: `nft flush ruleset` from another process skips it and `nft delete table`
//! from another process fails with EPERM.

use super::ruleset::{Batch, Targets, CREATE_TABLE};
use super::wire::*;
use super::NftraceError;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

const NFTA_TABLE_NAME: u16 = 1;
/// How long to wait for the kernel's acks (it answers during sendmsg, so this is a bound).
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const RECV_BUF: usize = 64 * 1024;

/// An nftables table that marks the targets' packets for tracing, alive as long as this:
/// dropping it closes the socket, and the kernel then deletes the table.
pub struct Marker {
    sock: Socket,
    table: String,
    seq: u32,
    targets: Targets,
    buf: Vec<u8>,
    /// Packets marked per second at most by each rule (0: no limit).
    limit: u32,
}

impl Marker {
    /// Creates table `inet TABLE`, owned by a new netlink socket, with its sets (empty),
    /// chains and rules, in one transaction; each rule marks at most `limit` packets a second
    /// (0: no limit).
    pub fn new(table: &str, limit: u32) -> Result<Marker, NftraceError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NftraceError::Socket)?;
        sock.bind_auto().map_err(NftraceError::Socket)?;
        // Errors then carry only the header of the refused request, not all of it.
        sock.set_cap_ack(true).map_err(NftraceError::Socket)?;
        set_recv_timeout(sock.as_raw_fd(), ACK_TIMEOUT).map_err(NftraceError::Socket)?;
        let mut m = Marker {
            sock,
            table: table.to_owned(),
            seq: 1,
            targets: Targets::default(),
            buf: Vec::with_capacity(RECV_BUF),
            limit,
        };
        let mut b = Batch::new(m.seq);
        b.limit = limit;
        b.ruleset(table);
        b.targets(table, &Targets::default(), false);
        m.commit(b)?;
        Ok(m)
    }

    /// The name of the table (in family `inet`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Makes the sets hold exactly these addresses and (IP protocol, port) pairs.
    pub fn set_targets(
        &mut self,
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
        ports: &[(u8, u16)],
    ) -> Result<(), NftraceError> {
        let targets = Targets::new(v4, v6, ports);
        let mut b = Batch::new(self.seq);
        // The chains' rules are written again, with their budget.
        b.limit = self.limit;
        b.targets(&self.table, &targets, true);
        self.commit(b)?;
        self.targets = targets;
        Ok(())
    }

    /// Whether table `inet TABLE` exists.
    pub fn present(&mut self) -> Result<bool, NftraceError> {
        let seq = self.next_seq();
        let mut m = MsgBuf::default();
        m.begin_msg(
            nft_type(NFT_MSG_GETTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_INET,
            0,
        );
        m.attr_str(NFTA_TABLE_NAME, &self.table);
        m.end_msg();
        self.send(&m.buf)?;
        let mut found = false;
        loop {
            self.recv(0)?;
            for msg in messages(&self.buf) {
                if msg.seq != seq {
                    continue;
                }
                if msg.ty == nft_type(NFT_MSG_NEWTABLE) {
                    found = true;
                } else if msg.ty == NLMSG_ERROR {
                    return match error_payload(msg.payload) {
                        Some((0, _)) => Ok(found),
                        Some((libc::ENOENT, _)) => Ok(false),
                        Some((errno, _)) => Err(self.refused("looking it up", errno)),
                        None => Err(self.no_answer()),
                    };
                }
            }
        }
    }

    /// Re-creates the table with the last targets if it is gone; does nothing if it exists.
    pub fn restore(&mut self) -> Result<(), NftraceError> {
        if self.present()? {
            return Ok(());
        }
        let mut b = Batch::new(self.seq);
        b.limit = self.limit;
        b.ruleset(&self.table);
        b.targets(&self.table, &self.targets, false);
        self.commit(b)
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NftraceError> {
        let kernel = SocketAddr::new(0, 0);
        self.sock
            .send_to(bytes, &kernel, 0)
            .map_err(NftraceError::Socket)?;
        Ok(())
    }

    /// Reads one datagram into `self.buf`, retrying on EINTR.
    fn recv(&mut self, flags: libc::c_int) -> Result<(), NftraceError> {
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, flags) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(self.no_answer()),
                Err(e) => return Err(NftraceError::Socket(e)),
            }
        }
    }

    /// Sends a batch and reads the ack of each of its messages: the first refusal is the
    /// error (the kernel then rolls the whole batch back).
    fn commit(&mut self, batch: Batch) -> Result<(), NftraceError> {
        let begin = self.seq; // every batch starts at self.seq (Batch::new)
        let (bytes, mut pending, next) = batch.finish();
        let end = next.wrapping_sub(1);
        self.seq = next;
        self.send(&bytes)?;
        let mut refusal: Option<(i32, String)> = None;
        while !pending.is_empty() {
            // The kernel answers the whole batch while handling sendmsg: once one refusal
            // is in, whatever else it sent is already queued.
            let flags = if refusal.is_some() {
                libc::MSG_DONTWAIT
            } else {
                0
            };
            match self.recv(flags) {
                Ok(()) => {}
                Err(NftraceError::NoAnswer { .. }) if refusal.is_some() => break,
                Err(e) => return Err(e),
            }
            for msg in messages(&self.buf) {
                let Some((errno, seq)) = (msg.ty == NLMSG_ERROR)
                    .then(|| error_payload(msg.payload))
                    .flatten()
                else {
                    continue;
                };
                let what = match pending.iter().position(|(s, _)| *s == seq) {
                    Some(i) => pending.swap_remove(i).1,
                    // The batch begin or end: the kernel refused the batch as a whole.
                    None if (seq == begin || seq == end) && errno != 0 => {
                        "the batch as a whole".to_owned()
                    }
                    None => continue,
                };
                if errno != 0 && refusal.is_none() {
                    refusal = Some((errno, what));
                }
            }
        }
        match refusal {
            None => Ok(()),
            Some((errno, what)) if what == CREATE_TABLE && is_flag_refusal(errno) => {
                Err(NftraceError::OwnerUnsupported)
            }
            Some((errno, what)) => Err(self.refused(&what, errno)),
        }
    }

    fn refused(&self, what: &str, errno: i32) -> NftraceError {
        NftraceError::Refused {
            table: self.table.clone(),
            what: what.to_owned(),
            errno,
        }
    }

    fn no_answer(&self) -> NftraceError {
        NftraceError::NoAnswer {
            table: self.table.clone(),
        }
    }
}

/// Kernels before 5.12 refuse unknown table flags with EINVAL, later ones with EOPNOTSUPP.
fn is_flag_refusal(errno: i32) -> bool {
    errno == libc::EINVAL || errno == libc::EOPNOTSUPP
}

#[cfg(test)]
mod tests {
    use super::super::ruleset::NFT_TABLE_F_OWNER;
    use super::*;

    /// The NEWTABLE message alone (for tests): `add table inet NAME { flags owner; }`.
    fn table_message(table: &str, seq: u32) -> Vec<u8> {
        let mut m = MsgBuf::default();
        m.begin_msg(
            nft_type(NFT_MSG_NEWTABLE),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
            NFPROTO_INET,
            0,
        );
        m.attr_str(NFTA_TABLE_NAME, table);
        m.attr_be32(2, NFT_TABLE_F_OWNER); // NFTA_TABLE_FLAGS
        m.end_msg();
        m.buf
    }

    #[test]
    fn table_message_is_byte_exact() {
        let ne16 = |v: u16| v.to_ne_bytes();
        let ne32 = |v: u32| v.to_ne_bytes();
        let mut want = Vec::new();
        want.extend(ne32(40)); // nlmsg_len: 16 + 4 + 12 ("ft_1\0" padded) + 8
        want.extend(ne16(0x0a00)); // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE
        want.extend(ne16(0x0605)); // REQUEST | ACK | EXCL | CREATE
        want.extend(ne32(5)); // seq
        want.extend(ne32(0)); // port id
        want.extend([1, 0, 0, 0]); // nfgenmsg: NFPROTO_INET, NFNETLINK_V0, res_id 0
        want.extend(ne16(9));
        want.extend(ne16(1)); // NFTA_TABLE_NAME
        want.extend(b"ft_1\0\0\0\0");
        want.extend(ne16(8));
        want.extend(ne16(2)); // NFTA_TABLE_FLAGS
        want.extend([0, 0, 0, 2]); // NFT_TABLE_F_OWNER, big endian
        assert_eq!(table_message("ft_1", 5), want);
    }

    #[test]
    fn batch_table_message_matches_the_lone_one() {
        let mut b = Batch::new(5);
        b.table("ft_1");
        let (bytes, pending, next) = b.finish();
        assert_eq!(pending, vec![(6, CREATE_TABLE.to_owned())]);
        assert_eq!(next, 8);
        let begin = [
            &ne(20u32)[..],
            &16u16.to_ne_bytes(),
            &1u16.to_ne_bytes(),
            &ne(5u32),
            &ne(0u32),
            &[0, 0, 0, 10],
        ]
        .concat();
        assert_eq!(&bytes[..20], &begin[..]);
        assert_eq!(&bytes[20..60], &table_message("ft_1", 6)[..]);
        assert_eq!(bytes.len(), 80);
        assert_eq!(&bytes[64..66], &17u16.to_ne_bytes()); // NFNL_MSG_BATCH_END
    }

    fn ne(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }
}
