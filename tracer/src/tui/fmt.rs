//! Short numbers for narrow columns.

/// The end of a long path: "…/dir/trace.pcapng".
pub fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_owned();
    }
    let t: String = s.chars().skip(n - max + 1).collect();
    format!("…{t}")
}

pub fn count(n: u64) -> String {
    let f = n as f64;
    match n {
        0..=99_999 => n.to_string(),
        100_000..=999_999 => format!("{:.1}k", f / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.1}G", f / 1e9),
    }
}

pub fn bytes(n: u64) -> String {
    let f = n as f64;
    match n {
        0..=9_999 => format!("{n}B"),
        10_000..=999_999 => format!("{:.1}K", f / 1024.0),
        1_000_000..=999_999_999 => format!("{:.1}M", f / (1024.0 * 1024.0)),
        _ => format!("{:.1}G", f / (1024.0 * 1024.0 * 1024.0)),
    }
}

pub fn rate(r: f64) -> String {
    if r < 10.0 && r.fract() != 0.0 {
        format!("{r:.1}")
    } else if r < 10_000.0 {
        format!("{r:.0}")
    } else {
        format!("{:.1}k", r / 1e3)
    }
}

pub fn ns(n: u64) -> String {
    if n < 1_000_000 {
        format!("{:.1}µs", n as f64 / 1e3)
    } else {
        format!("{:.1}ms", n as f64 / 1e6)
    }
}

pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
