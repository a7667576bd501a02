//! tcpdump filter expressions (pcap-filter(7)), run in the kernel: libpcap compiles the
//! expression to classic BPF ([`libpcap`]), [`translate`] turns that into eBPF for the tc
//! programs, which evaluate it before anything is reserved in the ring buffer, and [`kernel`]
//! loads it into the tc programs' program array.

pub mod kernel;
pub mod libpcap;
pub mod translate;

pub use translate::{Plan, Source};

impl Plan {
    /// Slots 1 (match) and 2 (miss) of program array fd 3: what the tests use.
    pub fn test(source: Source) -> Self {
        Self {
            source,
            prog_array_fd: 3,
            on_match: 1,
            on_miss: Some(2),
        }
    }
}

/// Expressions and frames the translation is checked on, by the unit tests against libpcap
/// and by the privileged tests against the kernel.
#[doc(hidden)]
pub mod corpus;
#[cfg(test)]
pub mod interp;

/// One classic BPF instruction (`struct bpf_insn` of pcap/bpf.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classic {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// One eBPF instruction (`struct bpf_insn` of linux/bpf.h): `regs` is dst | src << 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// libpcap's own message, as tcpdump prints it ("can't parse filter expression: syntax
    /// error", "illegal port number 99999 > 65535", …).
    #[error("{0}")]
    Syntax(String),
    #[error("the filter needs {0}, which flowtrace cannot run in the kernel")]
    Unsupported(String),
}

/// A checked, compiled filter expression.
pub struct CompiledFilter {
    pub expr: String,
    pub classic: Vec<Classic>,
    /// libpcap's program, for user space's check of each hop (see `filter::PacketFilter`).
    pub program: libpcap::Program,
}

impl CompiledFilter {
    /// Compiles `expr` with libpcap and checks that every instruction translates.
    pub fn new(expr: &str) -> Result<Self, FilterError> {
        let program = libpcap::Program::compile(expr)?;
        let classic = program.instructions();
        translate::translate(&classic, Plan::test(Source::Packet))?;
        Ok(Self {
            expr: expr.to_owned(),
            classic,
            program,
        })
    }

    /// The eBPF program `plan` describes.
    pub fn ebpf(&self, plan: Plan) -> Result<Vec<Insn>, FilterError> {
        translate::translate(&self.classic, plan)
    }
}
