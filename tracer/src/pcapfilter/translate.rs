//! Classic BPF (what libpcap compiles) into eBPF for a tc program, as the kernel's own
//! `bpf_convert_filter` does for socket filters, with two differences:
//! - packet bytes are read with `bpf_skb_load_bytes` into the stack: a read past the end of
//!   the packet ends the filter with "no match", as classic BPF does, and the verifier has
//!   nothing to prove about the offset (`X + k` can be anything);
//! - a match does not return: it tail-calls a slot of the program array (the reporting
//!   program); no match tail-calls the miss slot if there is one, then returns
//!   `TC_ACT_UNSPEC`, so the packet goes on untouched;
//! - the bytes may come from a *view* instead of the packet (`Source::View`): the first
//!   `VIEW_LEN` bytes of the packet as it will look after NAT, in a per-CPU map
//!   (`tracer_common::flow::View`), read directly after a bounds check.
//!
//! Registers: r6 = the skb context, r7 = A, r8 = X, r9 = the view; M[0..16], an 8-byte load
//! buffer and the view's map key live on the stack. 32-bit ALU and JMP32 keep classic BPF's
//! 32-bit arithmetic.

use super::{Classic, FilterError, Insn};

// Classic BPF (include/uapi/linux/filter.h, pcap/bpf.h).
const C_LD: u16 = 0x00;
const C_LDX: u16 = 0x01;
const C_ST: u16 = 0x02;
const C_STX: u16 = 0x03;
const C_ALU: u16 = 0x04;
const C_JMP: u16 = 0x05;
const C_RET: u16 = 0x06;
const C_MISC: u16 = 0x07;
const M_IMM: u16 = 0x00;
const M_ABS: u16 = 0x20;
const M_IND: u16 = 0x40;
const M_MEM: u16 = 0x60;
const M_LEN: u16 = 0x80;
const M_MSH: u16 = 0xa0;
const SRC_X: u16 = 0x08;
const RVAL_K: u16 = 0x00;
const RVAL_A: u16 = 0x10;
/// Linux "ancillary" loads (SKF_AD_OFF): libpcap emits none for a dead Ethernet handle.
const SKF_AD_OFF: u32 = 0xffff_f000;

// eBPF (include/uapi/linux/bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const NEG: u8 = 0x80;
const MOV: u8 = 0xb0;
const END: u8 = 0xd0;
const TO_BE: u8 = 0x08;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JGE: u8 = 0x30;
const JSET: u8 = 0x40;
const JNE: u8 = 0x50;
const JLT: u8 = 0xa0;
const JLE: u8 = 0xb0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const DIV: u8 = 0x30;
const MOD: u8 = 0x90;
const PSEUDO_MAP_FD: u8 = 1;
pub const HELPER_TAIL_CALL: i32 = 12;
pub const HELPER_SKB_LOAD_BYTES: i32 = 26;
/// `TC_ACT_UNSPEC`: "no opinion", the packet goes on.
pub const TC_ACT_UNSPEC: i32 = -1;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const RA: u8 = 7;
const RX: u8 = 8;
const R9: u8 = 9;
const FP: u8 = 10;
/// M[i] at fp - 64 + 4i; the load buffer below it.
const MEM_OFF: i16 = -64;
const BUF_OFF: i16 = -72;
const KEY_OFF: i16 = -76;
const HELPER_MAP_LOOKUP: i32 = 1;
const VIEW_LEN: i32 = tracer_common::flow::VIEW_LEN as i32;
/// Where the view's bytes start in its map value (after `len: u32`).
const VIEW_DATA: i16 = 4;

/// Where a filter reads the packet's bytes.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    Packet,
    /// The `View` in the per-CPU array map with this fd.
    View {
        map_fd: i32,
    },
}

/// What the translated program does: where it reads, and where it goes next.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub source: Source,
    pub prog_array_fd: i32,
    pub on_match: u32,
    pub on_miss: Option<u32>,
}

fn ins(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

#[derive(Clone, Copy)]
enum Target {
    Classic(usize),
    Match,
    NoMatch,
}

struct Emitter {
    out: Vec<Insn>,
    fixups: Vec<(usize, Target)>,
    view: bool,
}

impl Emitter {
    fn push(&mut self, i: Insn) {
        self.out.push(i);
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Target) {
        self.fixups.push((self.out.len(), to));
        self.push(ins(code, dst, src, 0, imm));
    }
    fn goto(&mut self, to: Target) {
        self.jump(JMP | JA, 0, 0, 0, to);
    }
    /// dst = the `size`-byte big-endian value at packet offset r2; "no match" past the end.
    fn load_packet(&mut self, size: u8, dst: u8) {
        let bytes = match size {
            W => 4,
            H => 2,
            _ => 1,
        };
        if self.view {
            // Past the view's bytes (or its buffer) is past the packet.
            self.jump(JMP | JGT | K, R2, 0, VIEW_LEN - bytes, Target::NoMatch);
            self.push(ins(LDX | W | MEM, R3, R9, 0, 0));
            self.push(ins(ALU64 | MOV | X, R4, R2, 0, 0));
            self.push(ins(ALU64 | ADD | K, R4, 0, 0, bytes));
            self.jump(JMP | JGT | X, R4, R3, 0, Target::NoMatch);
            self.push(ins(ALU64 | MOV | X, R3, R9, 0, 0));
            self.push(ins(ALU64 | ADD | X, R3, R2, 0, 0));
            self.push(ins(LDX | size | MEM, dst, R3, VIEW_DATA, 0));
            if bytes > 1 {
                self.push(ins(ALU | END | TO_BE, dst, 0, 0, bytes * 8));
            }
            return;
        }
        self.push(ins(ALU64 | MOV | X, R1, R6, 0, 0));
        self.push(ins(ALU64 | MOV | X, R3, FP, 0, 0));
        self.push(ins(ALU64 | ADD | K, R3, 0, 0, BUF_OFF.into()));
        self.push(ins(ALU64 | MOV | K, R4, 0, 0, bytes));
        self.push(ins(JMP | CALL, 0, 0, 0, HELPER_SKB_LOAD_BYTES));
        self.jump(JMP | JNE | K, R0, 0, 0, Target::NoMatch);
        self.push(ins(LDX | size | MEM, dst, FP, BUF_OFF, 0));
        if bytes > 1 {
            self.push(ins(ALU | END | TO_BE, dst, 0, 0, bytes * 8));
        }
    }
    /// r2 = k (an absolute offset).
    fn offset_k(&mut self, k: u32) {
        self.push(ins(ALU | MOV | K, R2, 0, 0, k as i32));
    }
    /// r2 = X + k without wrapping at 2^32 (a sum past it is past any packet: no match).
    fn offset_x_plus_k(&mut self, k: u32) {
        self.push(ins(ALU | MOV | K, R2, 0, 0, k as i32));
        self.push(ins(ALU64 | ADD | X, R2, RX, 0, 0));
        self.push(ins(ALU64 | MOV | X, R3, R2, 0, 0));
        self.push(ins(ALU64 | RSH | K, R3, 0, 0, 32));
        self.jump(JMP | JNE | K, R3, 0, 0, Target::NoMatch);
    }
}

fn mem_slot(k: u32) -> Result<i16, FilterError> {
    if k >= 16 {
        return Err(FilterError::Unsupported(format!(
            "scratch memory word M[{k}]"
        )));
    }
    Ok(MEM_OFF + 4 * k as i16)
}

fn unsupported(i: usize, c: &Classic) -> FilterError {
    FilterError::Unsupported(format!(
        "classic BPF instruction {i} (code {:#06x}, k {:#x})",
        c.code, c.k
    ))
}

/// Translates `prog` as `plan` says.
pub fn translate(prog: &[Classic], plan: Plan) -> Result<Vec<Insn>, FilterError> {
    let mut e = Emitter {
        out: Vec::with_capacity(prog.len() * 8 + 32),
        fixups: Vec::new(),
        view: matches!(plan.source, Source::View { .. }),
    };
    prologue(&mut e, &plan);
    let live = reachable(prog);
    let mut starts = Vec::with_capacity(prog.len());
    for (i, c) in prog.iter().enumerate() {
        starts.push(e.out.len());
        // The verifier refuses dead code; nothing jumps to an unreachable instruction.
        if live[i] {
            instruction(&mut e, i, c)?;
        }
    }
    // Classic programs end in RET; should one not, falling off its end is "no match".
    if e.out.last().is_none_or(|l| l.code != JMP | JA) {
        e.goto(Target::NoMatch);
    }
    let matched = e.out.len();
    if e.fixups.iter().any(|(_, t)| matches!(t, Target::Match)) {
        tail_call(&mut e, plan.prog_array_fd, plan.on_match);
    }
    let no_match = e.out.len();
    if let Some(miss) = plan.on_miss {
        tail_call(&mut e, plan.prog_array_fd, miss);
    }
    e.push(ins(ALU64 | MOV | K, R0, 0, 0, TC_ACT_UNSPEC));
    e.push(ins(JMP | EXIT, 0, 0, 0, 0));

    for (at, to) in std::mem::take(&mut e.fixups) {
        let pos = match to {
            Target::Classic(j) => *starts
                .get(j)
                .ok_or_else(|| FilterError::Unsupported(format!("a jump past the end (to {j})")))?,
            Target::Match => matched,
            Target::NoMatch => no_match,
        };
        let off = pos as i64 - (at as i64 + 1);
        e.out[at].off = i16::try_from(off)
            .map_err(|_| FilterError::Unsupported("a program this long".into()))?;
    }
    Ok(e.out)
}

/// r6 = the context, A = X = 0, the scratch memory zeroed (the verifier wants it written
/// before it is read), and with a view, r9 = this CPU's view of the packet.
fn prologue(e: &mut Emitter, plan: &Plan) {
    e.push(ins(ALU64 | MOV | X, R6, R1, 0, 0));
    e.push(ins(ALU | MOV | K, RA, 0, 0, 0));
    e.push(ins(ALU | MOV | K, RX, 0, 0, 0));
    for slot in 1..=9i16 {
        e.push(ins(ST | DW | MEM, FP, 0, -8 * slot, 0));
    }
    if let Source::View { map_fd } = plan.source {
        // r9 = &VIEW[0] (this CPU's).
        e.push(ins(ST | W | MEM, FP, 0, KEY_OFF, 0));
        e.push(ins(LD | DW | IMM, R1, PSEUDO_MAP_FD, 0, map_fd));
        e.push(ins(0, 0, 0, 0, 0));
        e.push(ins(ALU64 | MOV | X, R2, FP, 0, 0));
        e.push(ins(ALU64 | ADD | K, R2, 0, 0, KEY_OFF.into()));
        e.push(ins(JMP | CALL, 0, 0, 0, HELPER_MAP_LOOKUP));
        e.jump(JMP | JEQ | K, R0, 0, 0, Target::NoMatch);
        e.push(ins(ALU64 | MOV | X, R9, R0, 0, 0));
    }
}

/// Classic instruction `i`, in eBPF.
fn instruction(e: &mut Emitter, i: usize, c: &Classic) -> Result<(), FilterError> {
    let k = c.k;
    match c.code & 0x07 {
        C_LD | C_LDX if c.code & 0x18 == 0x18 => return Err(unsupported(i, c)),
        C_LD | C_LDX => load(e, i, c)?,
        C_ST => e.push(ins(STX | W | MEM, FP, RA, mem_slot(k)?, 0)),
        C_STX => e.push(ins(STX | W | MEM, FP, RX, mem_slot(k)?, 0)),
        C_ALU => alu(e, i, c)?,
        C_JMP => jump(e, i, c)?,
        C_RET => match c.code & 0x18 {
            RVAL_K => e.goto(if k != 0 {
                Target::Match
            } else {
                Target::NoMatch
            }),
            RVAL_A => {
                e.jump(JMP32 | JEQ | K, RA, 0, 0, Target::NoMatch);
                e.goto(Target::Match);
            }
            _ => return Err(unsupported(i, c)),
        },
        C_MISC => match c.code & 0xf8 {
            0x00 => e.push(ins(ALU | MOV | X, RX, RA, 0, 0)), // TAX
            0x80 => e.push(ins(ALU | MOV | X, RA, RX, 0, 0)), // TXA
            _ => return Err(unsupported(i, c)),
        },
        _ => return Err(unsupported(i, c)),
    }
    Ok(())
}

/// LD and LDX: into A or X, from an immediate, scratch memory, the length or the packet.
fn load(e: &mut Emitter, i: usize, c: &Classic) -> Result<(), FilterError> {
    // Only meaningful for loads: in ALU and JMP codes these bits are the operation.
    let size = match c.code & 0x18 {
        0x00 => W,
        0x08 => H,
        _ => B,
    };
    let k = c.k;
    if c.code & 0x07 == C_LD {
        match c.code & 0xe0 {
            M_IMM => e.push(ins(ALU | MOV | K, RA, 0, 0, k as i32)),
            M_ABS if k < SKF_AD_OFF => {
                e.offset_k(k);
                e.load_packet(size, RA);
            }
            M_IND => {
                e.offset_x_plus_k(k);
                e.load_packet(size, RA);
            }
            M_MEM => e.push(ins(LDX | W | MEM, RA, FP, mem_slot(k)?, 0)),
            M_LEN => e.push(ins(LDX | W | MEM, RA, R6, 0, 0)),
            _ => return Err(unsupported(i, c)),
        }
        return Ok(());
    }
    match c.code & 0xe0 {
        M_IMM => e.push(ins(ALU | MOV | K, RX, 0, 0, k as i32)),
        M_MEM => e.push(ins(LDX | W | MEM, RX, FP, mem_slot(k)?, 0)),
        M_LEN => e.push(ins(LDX | W | MEM, RX, R6, 0, 0)),
        M_MSH if k < SKF_AD_OFF => {
            e.offset_k(k);
            e.load_packet(B, RX);
            e.push(ins(ALU | AND | K, RX, 0, 0, 0xf));
            e.push(ins(ALU | LSH | K, RX, 0, 0, 2));
        }
        _ => return Err(unsupported(i, c)),
    }
    Ok(())
}

/// JA and the conditional jumps (forward only: the kernel refuses loops it cannot bound).
fn jump(e: &mut Emitter, i: usize, c: &Classic) -> Result<(), FilterError> {
    let k = c.k;
    let op = (c.code & 0xf0) as u8;
    if op == JA {
        if (k as i32) < 0 {
            return Err(FilterError::Unsupported(
                "a backward jump (a `protochain` loop), which the kernel cannot bound".into(),
            ));
        }
        e.goto(Target::Classic(i + 1 + k as usize));
        return Ok(());
    }
    if !matches!(op, JEQ | JGT | JGE | JSET) {
        return Err(unsupported(i, c));
    }
    let t = i + 1 + usize::from(c.jt);
    let f = i + 1 + usize::from(c.jf);
    let (src, reg, imm) = if c.code & SRC_X != 0 {
        (X, RX, 0)
    } else {
        (K, 0, k as i32)
    };
    // When the true branch falls through, jump on the opposite condition.
    let inverse = match op {
        JEQ => Some(JNE),
        JGT => Some(JLE),
        JGE => Some(JLT),
        _ => None,
    };
    match inverse {
        Some(inv) if t == i + 1 => e.jump(JMP32 | inv | src, RA, reg, imm, Target::Classic(f)),
        _ => {
            e.jump(JMP32 | op | src, RA, reg, imm, Target::Classic(t));
            if f != i + 1 {
                e.goto(Target::Classic(f));
            }
        }
    }
    Ok(())
}

/// Tail-calls `slot`; falls through when the slot is empty.
fn tail_call(e: &mut Emitter, prog_array_fd: i32, slot: u32) {
    e.push(ins(ALU64 | MOV | X, R1, R6, 0, 0));
    e.push(ins(LD | DW | IMM, R2, PSEUDO_MAP_FD, 0, prog_array_fd));
    e.push(ins(0, 0, 0, 0, 0));
    e.push(ins(ALU | MOV | K, R3, 0, 0, slot as i32));
    e.push(ins(JMP | CALL, 0, 0, 0, HELPER_TAIL_CALL));
}

/// Which classic instructions a path from the first reaches.
fn reachable(prog: &[Classic]) -> Vec<bool> {
    let mut live = vec![false; prog.len()];
    let mut todo = vec![0usize];
    while let Some(i) = todo.pop() {
        let Some(c) = prog.get(i) else { continue };
        if live[i] {
            continue;
        }
        live[i] = true;
        match (c.code & 0x07, c.code & 0xf0) {
            (C_RET, _) => {}
            (C_JMP, 0x00) => todo.push((i + 1).wrapping_add(c.k as usize)),
            (C_JMP, _) => todo.extend([i + 1 + usize::from(c.jt), i + 1 + usize::from(c.jf)]),
            _ => todo.push(i + 1),
        }
    }
    live
}

fn alu(e: &mut Emitter, i: usize, c: &Classic) -> Result<(), FilterError> {
    let op = (c.code & 0xf0) as u8;
    if op == NEG {
        e.push(ins(ALU | NEG, RA, 0, 0, 0));
        return Ok(());
    }
    if !matches!(
        op,
        0x00 | 0x10 | 0x20 | DIV | 0x40 | AND | LSH | RSH | MOD | 0xa0
    ) {
        return Err(unsupported(i, c));
    }
    if c.code & SRC_X != 0 {
        match op {
            // Classic BPF: dividing by zero ends the filter with 0.
            DIV | MOD => e.jump(JMP32 | JEQ | K, RX, 0, 0, Target::NoMatch),
            // libpcap: a shift by 32 or more gives 0.
            LSH | RSH => {
                e.push(ins(JMP32 | JGE | K, RX, 0, 2, 32));
                e.push(ins(ALU | op | X, RA, RX, 0, 0));
                e.push(ins(JMP | JA, 0, 0, 1, 0));
                e.push(ins(ALU | MOV | K, RA, 0, 0, 0));
                return Ok(());
            }
            _ => {}
        }
        e.push(ins(ALU | op | X, RA, RX, 0, 0));
    } else {
        match op {
            DIV | MOD if c.k == 0 => {
                return Err(FilterError::Unsupported("division by zero".into()))
            }
            LSH | RSH if c.k >= 32 => e.push(ins(ALU | MOV | K, RA, 0, 0, 0)),
            _ => e.push(ins(ALU | op | K, RA, 0, 0, c.k as i32)),
        }
    }
    Ok(())
}
