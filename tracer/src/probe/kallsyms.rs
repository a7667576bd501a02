//! Naming kernel addresses (`kfree_skb`'s location) with /proc/kallsyms.

use std::io::BufRead;

pub struct Kallsyms {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    /// Reads /proc/kallsyms; empty (every lookup unknown) if it is unreadable or the
    /// addresses are hidden (kptr_restrict).
    pub fn load() -> Self {
        let syms = std::fs::File::open("/proc/kallsyms")
            .map(|f| Self::parse(std::io::BufReader::new(f)))
            .unwrap_or_default();
        Self { syms }
    }

    fn parse(r: impl BufRead) -> Vec<(u64, String)> {
        let mut syms: Vec<(u64, String)> = r
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_owned()))
            })
            .collect();
        syms.sort();
        syms
    }

    #[cfg(test)]
    fn from_text(text: &str) -> Self {
        Self {
            syms: Self::parse(text.as_bytes()),
        }
    }

    /// The function containing `addr`, e.g. `nf_hook_slow`, or `None`.
    pub fn function(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        i.checked_sub(1).map(|i| self.syms[i].1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_enclosing_function() {
        let k = Kallsyms::from_text(
            "ffffffff81000000 T _stext\nffffffff81a00000 t nf_hook_slow\nffffffff81a00400 T ip_forward\nffffffff81b00000 D some_data\n",
        );
        assert_eq!(k.function(0xffffffff81a00123), Some("nf_hook_slow"));
        assert_eq!(k.function(0xffffffff81a00400), Some("ip_forward"));
        assert_eq!(k.function(0x1000), None);
    }

    #[test]
    fn hidden_addresses_give_nothing() {
        let k = Kallsyms::from_text("0000000000000000 T nf_hook_slow\n");
        assert_eq!(k.function(0xffffffff81a00123), None);
    }
}
