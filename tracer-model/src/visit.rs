//! Every text field of a packet, for whoever must clean text from elsewhere before showing
//! it (`Packet::visit_strings`).

use std::borrow::Cow;

use crate::{Drop, Hop, Nat, Packet, Shared, Text};

/// A text field a visitor may replace (`Packet::visit_strings`): the visitor returns the
/// replacement, so a field it leaves alone is not copied (a borrowed `Text` stays borrowed).
trait Field {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>);
}

impl Field for String {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        if let Some(n) = f(self) {
            *self = n;
        }
    }
}

impl Field for Text {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        if let Some(n) = f(self) {
            *self = Cow::Owned(n);
        }
    }
}

impl Field for Shared {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        if let Some(n) = f(self) {
            *self = n.into();
        }
    }
}

impl<T: Field> Field for Option<T> {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        if let Some(s) = self.as_mut() {
            s.visit(f);
        }
    }
}

impl<T: Field> Field for Vec<T> {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        self.iter_mut().for_each(|s| s.visit(f));
    }
}

impl<T: Field> Field for Box<T> {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        (**self).visit(f);
    }
}

impl Field for Nat {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        self.kind.visit(f);
        self.from.visit(f);
        self.to.visit(f);
    }
}

impl Field for Hop {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        match self {
            Hop::Tc(t) => {
                t.iface.visit(f);
                t.dir.visit(f);
                t.role.visit(f);
                t.src.visit(f);
                t.dst.visit(f);
                t.nat.visit(f);
            }
            Hop::Nf(n) => {
                n.hook.visit(f);
                n.table.visit(f);
                n.verdict.visit(f);
                n.src.visit(f);
                n.dst.visit(f);
                n.rule.visit(f);
                n.policy.visit(f);
                n.rule_source.visit(f);
                n.chain_path.visit(f);
                n.nat.visit(f);
            }
        }
    }
}

impl Field for Drop {
    fn visit(&mut self, f: &mut dyn FnMut(&str) -> Option<String>) {
        self.reason.visit(f);
        for o in [
            &mut self.location,
            &mut self.hook,
            &mut self.table,
            &mut self.rule,
            &mut self.rule_source,
            &mut self.last_hop,
            &mut self.place,
            &mut self.freed_by,
        ] {
            o.visit(f);
        }
        self.rule_candidates.visit(f);
    }
}

impl Packet {
    /// Every text field, for whoever must clean text from elsewhere before showing it (a
    /// recording's comments are anyone's): `f` returns a field's replacement, or None to
    /// leave it as it is.
    pub fn visit_strings(&mut self, f: &mut impl FnMut(&str) -> Option<String>) {
        let f: &mut dyn FnMut(&str) -> Option<String> = f;
        self.time.visit(f);
        self.skb.visit(f);
        for o in [&mut self.container, &mut self.src, &mut self.dst] {
            o.visit(f);
        }
        self.tcp_flags.visit(f);
        self.summary.visit(f);
        self.way.visit(f);
        self.proto.visit(f);
        self.hops.visit(f);
        self.drop.visit(f);
    }
}
