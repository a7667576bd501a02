//! A small eBPF interpreter for what [`super::translate`] emits, so that the translation can
//! be checked against libpcap without root. `bpf_skb_load_bytes` reads the frame;
//! `bpf_map_lookup_elem` gives the view (the frame's first `VIEW_LEN` bytes); `bpf_tail_call`
//! ends the run with the slot it calls (as [`super::Plan::test`] numbers them).

use super::{translate::HELPER_SKB_LOAD_BYTES, translate::HELPER_TAIL_CALL, Insn};

const FP: u64 = 1 << 40;
const CTX: u64 = 1 << 20;
const STACK: usize = 512;
const VIEW: u64 = 1 << 30;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Match,
    /// No match, and the miss slot was called.
    Miss,
    NoMatch,
}

struct Vm<'a> {
    r: [u64; 11],
    stack: [u8; STACK],
    frame: &'a [u8],
    /// `View { len, data }` as the map holds it.
    view: Vec<u8>,
}

impl Vm<'_> {
    /// A helper call; `Some` when it ends the program (a tail call).
    fn call(&mut self, helper: i32) -> Option<Outcome> {
        match helper {
            HELPER_TAIL_CALL => {
                return Some(match self.r[3] {
                    1 => Outcome::Match,
                    2 => Outcome::Miss,
                    s => panic!("tail call to slot {s}"),
                })
            }
            1 => self.r[0] = VIEW,
            HELPER_SKB_LOAD_BYTES => {
                let (off, to, n) = (self.r[2] as u32 as usize, self.r[3], self.r[4] as usize);
                let frame = self.frame;
                self.r[0] = match frame.get(off..off + n) {
                    Some(bytes) => {
                        self.stack_at(to, n).copy_from_slice(bytes);
                        0
                    }
                    None => (-14i64) as u64,
                };
            }
            h => panic!("helper {h} is not emitted"),
        }
        self.r[1..6].fill(0xdead_beef);
        None
    }

    fn stack_at(&mut self, addr: u64, n: usize) -> &mut [u8] {
        let start = (addr - (FP - STACK as u64)) as usize;
        assert!(
            addr < FP && start + n <= STACK,
            "stack access out of bounds: {addr:#x}"
        );
        &mut self.stack[start..start + n]
    }

    fn load(&mut self, addr: u64, n: usize) -> u64 {
        if addr == CTX {
            assert_eq!(n, 4, "only __sk_buff.len is read from the context");
            return self.frame.len() as u64;
        }
        if (VIEW..VIEW + self.view.len() as u64).contains(&addr) {
            let at = (addr - VIEW) as usize;
            let bytes = self
                .view
                .get(at..at + n)
                .expect("the verifier bounds view reads");
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(bytes);
            return u64::from_le_bytes(v);
        }
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(self.stack_at(addr, n));
        u64::from_le_bytes(v)
    }

    fn store(&mut self, addr: u64, n: usize, value: u64) {
        self.stack_at(addr, n)
            .copy_from_slice(&value.to_le_bytes()[..n]);
    }
}

fn size(code: u8) -> usize {
    match code & 0x18 {
        0x00 => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

fn alu(op: u8, a: u64, b: u64, wide: bool, imm: i32) -> u64 {
    let mask = if wide { u64::MAX } else { u32::MAX as u64 };
    let bits = if wide { 63 } else { 31 };
    let (a, b) = (a & mask, b & mask);
    let v = match op {
        0x00 => a.wrapping_add(b),
        0x10 => a.wrapping_sub(b),
        0x20 => a.wrapping_mul(b),
        0x30 => a.checked_div(b).unwrap_or(0),
        0x40 => a | b,
        0x50 => a & b,
        0x60 => a << (b & bits),
        0x70 => a >> (b & bits),
        0x80 => a.wrapping_neg(),
        0x90 => a.checked_rem(b).unwrap_or(a),
        0xa0 => a ^ b,
        0xb0 => b,
        0xd0 => match imm {
            16 => u64::from((a as u16).swap_bytes()),
            32 => u64::from((a as u32).swap_bytes()),
            _ => a.swap_bytes(),
        },
        _ => panic!("ALU op {op:#x} is not emitted"),
    };
    v & mask
}

/// Runs `prog` on `frame` as a tc program would see it.
/// Whether a conditional jump `op` is taken for operands `a`, `b`.
fn taken(op: u8, a: u64, b: u64) -> bool {
    match op {
        0x00 => true,
        0x10 => a == b,
        0x20 => a > b,
        0x30 => a >= b,
        0x40 => a & b != 0,
        0x50 => a != b,
        0xa0 => a < b,
        0xb0 => a <= b,
        _ => panic!("jump op {op:#x} is not emitted"),
    }
}

pub fn run(prog: &[Insn], frame: &[u8]) -> Outcome {
    let shown = &frame[..frame.len().min(tracer_common::flow::VIEW_LEN)];
    let mut view = (shown.len() as u32).to_le_bytes().to_vec();
    view.extend_from_slice(shown);
    view.resize(4 + tracer_common::flow::VIEW_LEN, 0x5a);
    let mut vm = Vm {
        r: [0; 11],
        stack: [0xa5; STACK],
        frame,
        view,
    };
    vm.r[1] = CTX;
    vm.r[10] = FP;
    let mut pc = 0usize;
    for _ in 0..100_000 {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        let class = i.code & 0x07;
        let operand = if i.code & 0x08 != 0 {
            vm.r[src]
        } else {
            i.imm as i64 as u64
        };
        pc += 1;
        match class {
            0x04 | 0x07 => {
                let wide = class == 0x07;
                let b = if i.code & 0xf0 == 0xd0 { 0 } else { operand };
                vm.r[dst] = alu(i.code & 0xf0, vm.r[dst], b, wide, i.imm);
            }
            0x00 => {
                vm.r[dst] = i.imm as u32 as u64;
                pc += 1;
            }
            0x01 => vm.r[dst] = vm.load(vm.r[src].wrapping_add(i.off as i64 as u64), size(i.code)),
            0x02 => vm.store(
                vm.r[dst].wrapping_add(i.off as i64 as u64),
                size(i.code),
                i.imm as i64 as u64,
            ),
            0x03 => vm.store(
                vm.r[dst].wrapping_add(i.off as i64 as u64),
                size(i.code),
                vm.r[src],
            ),
            0x05 | 0x06 => {
                let op = i.code & 0xf0;
                match op {
                    0x80 => {
                        if let Some(end) = vm.call(i.imm) {
                            return end;
                        }
                    }
                    0x90 => {
                        assert_eq!(vm.r[0] as i32, -1, "the only return is TC_ACT_UNSPEC");
                        return Outcome::NoMatch;
                    }
                    _ => {
                        let (a, b) = if class == 0x06 {
                            (vm.r[dst] & 0xffff_ffff, operand & 0xffff_ffff)
                        } else {
                            (vm.r[dst], operand)
                        };
                        let taken = taken(op, a, b);
                        if taken {
                            pc = (pc as i64 + i64::from(i.off)) as usize;
                        }
                    }
                }
            }
            _ => panic!("class {class} is not emitted"),
        }
    }
    panic!("the program did not end")
}
