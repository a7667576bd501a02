//! Netlink/nfnetlink framing for nf_tables, written by hand.
//!
//! netlink-packet-core only frames generic netlink messages and no published crate covers
//! nf_tables well enough here (none builds tables with NFT_TABLE_F_OWNER, none parses
//! NFT_MSG_TRACE events), so the TLVs are built and parsed in this module. The numbers
//! below were checked against the kernel uapi headers linux/netfilter/nf_tables.h,
//! nfnetlink.h and netfilter.h.

/// nfnetlink subsystem of nf_tables.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NLMSG_MIN_TYPE and NLMSG_MIN_TYPE + 1.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub const NFNL_MSG_BATCH_END: u16 = 17;
/// Multicast group of trace events (enum nfnetlink_groups).
pub const NFNLGRP_NFTRACE: u32 = 9;

// enum nf_tables_msg_types
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_DELSETELEM: u16 = 14;
pub const NFT_MSG_TRACE: u16 = 17;

pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

pub const NLMSG_ERROR: u16 = 2;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLA_F_NESTED: u16 = 0x8000;
/// Mask of the attribute type without NLA_F_NESTED / NLA_F_NET_BYTEORDER.
pub const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NLMSG_HDRLEN: usize = 16;
/// struct nfgenmsg: family, version, res_id (be16).
pub const NFGENMSG_LEN: usize = 4;

/// The nfnetlink message type of an nf_tables message.
pub const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages and their attributes to one buffer.
#[derive(Debug, Default)]
pub struct MsgBuf {
    pub buf: Vec<u8>,
    nests: Vec<usize>,
    msg_start: usize,
}

impl MsgBuf {
    /// Starts a message: nlmsghdr (length patched by `end_msg`) and nfgenmsg.
    pub fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.msg_start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    pub fn end_msg(&mut self) {
        let len = (self.buf.len() - self.msg_start) as u32;
        self.buf[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    pub fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    pub fn nest_start(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    pub fn nest_end(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }
}

/// One netlink message of a received buffer.
#[derive(Debug, Clone, Copy)]
pub struct NlMsg<'a> {
    pub ty: u16,
    pub seq: u32,
    /// Everything after the nlmsghdr.
    pub payload: &'a [u8],
}

/// Iterates over the netlink messages in `buf`; stops at the first malformed header.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = NlMsg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32_ne(rest.get(0..4)?)? as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32_ne(&rest[8..12])?;
        let msg = NlMsg {
            ty,
            seq,
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(msg)
    })
}

/// Iterates over (type without flags, value) of the attributes in `buf`; stops at the
/// first malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let hdr = rest.get(0..4)?;
        let len = u16::from_ne_bytes([hdr[0], hdr[1]]) as usize;
        let ty = u16::from_ne_bytes([hdr[2], hdr[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some((ty, value))
    })
}

pub fn u32_ne(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?))
}

pub fn be32(b: &[u8]) -> Option<u32> {
    (b.len() == 4).then(|| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// A NUL-terminated (or not) netlink string attribute.
pub fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The errno of an NLMSG_ERROR payload (0 for an ack) and the sequence number of the
/// request it answers.
pub fn error_payload(payload: &[u8]) -> Option<(i32, u32)> {
    let err = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    let seq = u32_ne(payload.get(12..16)?)?;
    Some((-err, seq))
}

/// setsockopt(fd, SOL_SOCKET, name, &value) for an int option.
pub fn set_sock_int(
    fd: std::os::fd::RawFd,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SO_RCVTIMEO: a blocking recv on `fd` gives up after `t` with EAGAIN.
pub fn set_recv_timeout(fd: std::os::fd::RawFd, t: std::time::Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the pointer and length describe a live timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attrs_roundtrip() {
        let mut b = MsgBuf::default();
        b.begin_msg(
            nft_type(NFT_MSG_NEWTABLE),
            NLM_F_REQUEST,
            7,
            NFPROTO_INET,
            0,
        );
        b.nest_start(4);
        b.attr_be32(1, 5);
        b.attr_str(2, "abc");
        b.nest_end();
        b.end_msg();
        let msgs: Vec<_> = messages(&b.buf).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        let top: Vec<_> = attrs(&msgs[0].payload[4..]).collect();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, 4);
        let inner: Vec<_> = attrs(top[0].1).collect();
        assert_eq!(inner, vec![(1, &[0, 0, 0, 5][..]), (2, &b"abc\0"[..])]);
    }

    #[test]
    fn malformed_input_stops_iteration() {
        assert_eq!(messages(&[1, 2, 3]).count(), 0);
        assert_eq!(messages(&[0xff; 40]).count(), 0);
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
        assert_eq!(error_payload(&[0; 8]), None);
    }
}
