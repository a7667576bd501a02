//! The few `bpf(2)` commands flowtrace issues itself, for what aya 0.14 cannot do: load a
//! netfilter program, load a filter translated at run time, and put a program in a program
//! array slot by fd. The attr structs are prefixes of `union bpf_attr` (uapi, stable ABI).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// `union bpf_attr` for BPF_PROG_LOAD, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_MAP_*_ELEM.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_MAP_CREATE, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

fn sys_bpf_raw<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// A command that returns a new fd.
pub fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = sys_bpf_raw(cmd, attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Loads `count` instructions at `insns` (8 bytes each) as a GPL program. On refusal, the
/// error and the verifier's last lines (`; verifier: … | …`) from a second, logged attempt.
pub fn load_program(
    name: &str,
    prog_type: u32,
    expected_attach_type: u32,
    insns: *const u8,
    count: usize,
) -> Result<OwnedFd, (std::io::Error, String)> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: count as u32,
        insns: insns as u64,
        license: license.as_ptr() as u64,
        expected_attach_type,
        ..Default::default()
    };
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            // Again, with the verifier's log, to say why.
            let mut log = vec![0u8; 256 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = sys_bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let log = if tail.is_empty() {
                String::new()
            } else {
                format!(
                    "; verifier: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            };
            Err((err, log))
        }
    }
}

/// Sets slot `index` of the program array `map_fd` to `prog_fd`.
pub fn set_program_slot(map_fd: RawFd, index: u32, prog_fd: RawFd) -> std::io::Result<()> {
    let value = prog_fd as u32;
    let mut attr = MapElemAttr {
        map_fd: map_fd as u32,
        key: &index as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    sys_bpf_raw(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// A program array of `entries` slots (for checking a translated filter on its own).
pub fn create_program_array(entries: u32) -> std::io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_PROG_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_flags: 0,
    };
    sys_bpf(BPF_MAP_CREATE, &mut attr)
}

/// A one-entry per-CPU array of `value_size` bytes (a stand-in for the `VIEW` map).
pub fn create_view_map(value_size: u32) -> std::io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size: 4,
        value_size,
        max_entries: 1,
        map_flags: 0,
    };
    sys_bpf(BPF_MAP_CREATE, &mut attr)
}

/// Runs program `prog_fd` once on `frame` (`BPF_PROG_TEST_RUN`); its return value.
pub fn test_run(prog_fd: RawFd, frame: &[u8]) -> std::io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    sys_bpf_raw(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_uapi() {
        // Offsets from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(MapElemAttr, key), 8);
        assert_eq!(std::mem::offset_of!(MapElemAttr, flags), 24);
        assert_eq!(std::mem::offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(std::mem::offset_of!(TestRunAttr, duration), 36);
        assert_eq!(size_of::<MapCreateAttr>(), 20);
    }
}
