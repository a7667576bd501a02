//! libpcap itself compiles the expression (so its grammar and semantics are exactly
//! tcpdump's), and `pcap_offline_filter` is the reference the translation is tested against.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use super::{Classic, FilterError};

/// `DLT_EN10MB`: every interface flowtrace attaches to hands tc an Ethernet frame.
const DLT_EN10MB: c_int = 1;
/// `PCAP_NETMASK_UNKNOWN`: as tcpdump without an interface (`ip broadcast` is refused).
const NETMASK_UNKNOWN: c_uint = 0xffff_ffff;
const SNAPLEN: c_int = 262_144;

#[repr(C)]
struct BpfInsn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut BpfInsn,
}

#[repr(C)]
struct PktHdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

#[link(name = "pcap")]
unsafe extern "C" {
    fn pcap_open_dead(linktype: c_int, snaplen: c_int) -> *mut c_void;
    fn pcap_compile(
        p: *mut c_void,
        fp: *mut BpfProgram,
        s: *const c_char,
        optimize: c_int,
        netmask: c_uint,
    ) -> c_int;
    fn pcap_geterr(p: *mut c_void) -> *const c_char;
    fn pcap_freecode(fp: *mut BpfProgram);
    fn pcap_close(p: *mut c_void);
    fn pcap_offline_filter(fp: *const BpfProgram, h: *const PktHdr, pkt: *const u8) -> c_int;
}

/// A compiled program, owned: freed with `pcap_freecode`.
pub struct Program {
    prog: BpfProgram,
}

impl Program {
    /// Compiles `expr` for Ethernet frames, optimised, as `tcpdump` would.
    pub fn compile(expr: &str) -> Result<Self, FilterError> {
        let text =
            CString::new(expr).map_err(|_| FilterError::Syntax("NUL in expression".into()))?;
        // SAFETY: plain libpcap calls; the handle is closed on every path below.
        unsafe {
            let handle = pcap_open_dead(DLT_EN10MB, SNAPLEN);
            if handle.is_null() {
                return Err(FilterError::Syntax(
                    "libpcap could not open a dead handle".into(),
                ));
            }
            let mut prog = BpfProgram {
                bf_len: 0,
                bf_insns: std::ptr::null_mut(),
            };
            let rc = pcap_compile(handle, &mut prog, text.as_ptr(), 1, NETMASK_UNKNOWN);
            let result = if rc == 0 {
                Ok(Self { prog })
            } else {
                let msg = pcap_geterr(handle);
                let msg = if msg.is_null() {
                    "can't parse filter expression: syntax error".to_owned()
                } else {
                    CStr::from_ptr(msg).to_string_lossy().into_owned()
                };
                Err(FilterError::Syntax(msg))
            };
            pcap_close(handle);
            result
        }
    }

    /// The classic BPF instructions, as `tcpdump -d` lists them.
    pub fn instructions(&self) -> Vec<Classic> {
        if self.prog.bf_insns.is_null() {
            return Vec::new();
        }
        // SAFETY: libpcap allocated `bf_len` instructions at `bf_insns`.
        let raw =
            unsafe { std::slice::from_raw_parts(self.prog.bf_insns, self.prog.bf_len as usize) };
        raw.iter()
            .map(|i| Classic {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect()
    }

    /// libpcap's own verdict on a whole frame (`pcap_offline_filter`): the reference.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.matches_captured(frame, frame.len() as u32)
    }

    /// The verdict on the first bytes of a frame of `wire_len` bytes (`len`/`less` see the
    /// wire length; a load past the captured bytes fails, as in tcpdump).
    pub fn matches_captured(&self, captured: &[u8], wire_len: u32) -> bool {
        let hdr = PktHdr {
            ts: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            caplen: captured.len() as u32,
            len: wire_len.max(captured.len() as u32),
        };
        let frame = captured;
        // SAFETY: the header describes exactly `frame`.
        unsafe { pcap_offline_filter(&self.prog, &hdr, frame.as_ptr()) != 0 }
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Program({} instructions)", self.prog.bf_len)
    }
}

// SAFETY: the program is plain memory owned by this value; libpcap's `pcap_offline_filter`
// only reads it, so sharing it between threads is sound.
unsafe impl Send for Program {}
unsafe impl Sync for Program {}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `prog` came from pcap_compile and is freed once.
        unsafe { pcap_freecode(&mut self.prog) }
    }
}
