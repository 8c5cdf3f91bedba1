//! What both policy engines (L4 authorization at the destination, egress at the source) file
//! their rules under: a rule's position, and CIDRs.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

/// A rule by position: its policy in the workload's list, the rule within it, and whether the
/// policy denies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuleRef {
    pub policy: u32,
    pub rule: u32,
    pub deny: bool,
}

/// Entries filed under CIDRs: one hash table per prefix length and address family, so a
/// lookup masks the address once per length in use and probes one table each, instead of
/// testing every CIDR.
#[derive(Debug)]
pub(crate) struct CidrIndex<T> {
    tables: Vec<CidrTable<T>>,
}

#[derive(Debug)]
struct CidrTable<T> {
    prefix_len: u8,
    v4: bool,
    /// Keyed by the masked network address.
    entries: FxHashMap<IpAddr, Vec<T>>,
}

impl<T> Default for CidrIndex<T> {
    fn default() -> Self {
        Self { tables: Vec::new() }
    }
}

impl<T> CidrIndex<T> {
    /// The entries filed under `net` (an empty list the first time).
    pub fn entry(&mut self, net: IpNet) -> &mut Vec<T> {
        let (prefix_len, v4) = (net.prefix_len(), net.addr().is_ipv4());
        let i = match self
            .tables
            .iter()
            .position(|t| t.prefix_len == prefix_len && t.v4 == v4)
        {
            Some(i) => i,
            None => {
                self.tables.push(CidrTable {
                    prefix_len,
                    v4,
                    entries: FxHashMap::default(),
                });
                self.tables.len() - 1
            }
        };
        self.tables[i].entries.entry(net.network()).or_default()
    }

    /// The entries of every CIDR that contains `addr`.
    pub fn containing(&self, addr: IpAddr) -> impl Iterator<Item = &[T]> + '_ {
        self.tables.iter().filter_map(move |t| {
            if t.v4 != addr.is_ipv4() {
                return None;
            }
            let net = IpNet::new(addr, t.prefix_len).ok()?;
            t.entries.get(&net.network()).map(Vec::as_slice)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_finds_the_entries_of_every_cidr_containing_it_and_no_other() {
        let mut index = CidrIndex::default();
        index.entry("10.0.0.0/8".parse().unwrap()).push("a");
        index.entry("10.1.0.0/16".parse().unwrap()).push("b");
        // Host bits are masked: the same network as 10.1.0.0/16.
        index.entry("10.1.2.3/16".parse().unwrap()).push("c");
        index.entry("192.168.0.0/16".parse().unwrap()).push("d");
        index.entry("::/0".parse().unwrap()).push("e");
        let found = |addr: &str| {
            let mut all: Vec<&str> = index
                .containing(addr.parse().unwrap())
                .flatten()
                .copied()
                .collect();
            all.sort();
            all
        };
        assert_eq!(found("10.1.9.9"), ["a", "b", "c"]);
        assert_eq!(found("10.2.0.1"), ["a"]);
        assert_eq!(found("172.16.0.1"), Vec::<&str>::new());
        assert_eq!(found("2001:db8::1"), ["e"]);
    }
}
