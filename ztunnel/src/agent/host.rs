//! The node agent's rules in the node's own network namespace (where the agent runs): what
//! makes kubelet's health probes work under STRICT, as Istio's ambient mode does.
//!
//! - **Probe SNAT.** TCP the node itself sends (its source is one of the node's own addresses:
//!   `fib saddr type local`) to an enrolled pod's IPv4 address leaves with source
//!   169.254.7.127 ([`super::rules::PROBE_SOURCE`]). Inside the pod, that source is let through
//!   uncaptured, so kubelet's probes reach the application even when the pod takes mTLS only.
//!   The node's own connections (kubelet, and any host-network process) are trusted, as in
//!   Istio; the set of addresses follows the enrolled pods.
//! - **Anti-spoofing.** The in-pod rule cannot tell a SNATed probe from a packet another pod
//!   sent with that source: packet marks do not cross network namespaces. So the node drops
//!   every packet it *forwards* (routed: `ip` family, or bridged between two ports of a Linux
//!   bridge: `bridge` family) whose source is 169.254.7.127: only packets the node originates
//!   may carry it. Left open: pods attached so that their packets reach another pod without
//!   passing the node's IP forwarding or a Linux bridge's forwarding (macvlan, ipvlan, SR-IOV,
//!   eBPF datapaths that redirect between interfaces past netfilter).
//!
//! Both tables are written whole by one atomic `nft -f` run (idempotent); [`remove`] deletes
//! them (agent shutdown).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::rules::{run_in, PROBE_SOURCE};
use crate::inpod::netns::Netns;

pub const TABLE: &str = "ztunnel-host";
/// The set of enrolled pods' IPv4 addresses in the `ip` table.
pub const POD_SET: &str = "pod_ips";

/// The script that (re)writes both tables, with `pods` as the SNAT destinations.
pub fn ruleset(pods: &BTreeSet<Ipv4Addr>) -> String {
    let elements = if pods.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = pods.iter().map(|ip| ip.to_string()).collect();
        format!(
            "add element ip {TABLE} {POD_SET} {{ {} }}\n",
            list.join(", ")
        )
    };
    format!(
        "table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  set {POD_SET} {{ type ipv4_addr; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta l4proto tcp fib saddr type local ip daddr @{POD_SET} snat to {PROBE_SOURCE}
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    ip saddr {PROBE_SOURCE} drop
  }}
}}
{elements}table bridge {TABLE}
delete table bridge {TABLE}
table bridge {TABLE} {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    ether type ip ip saddr {PROBE_SOURCE} drop
  }}
}}
"
    )
}

/// The script that deletes both tables (a missing one is no error).
pub fn removal() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\ntable bridge {TABLE}\ndelete table bridge {TABLE}\n")
}

/// Writes the node's tables with `pods` as the probe SNAT's destinations.
pub fn sync(node: &Netns, pods: &BTreeSet<Ipv4Addr>) -> Result<(), String> {
    run_in(node, "nft", &["-f", "-"], Some(ruleset(pods)))
}

/// Deletes the node's tables.
pub fn remove(node: &Netns) -> Result<(), String> {
    run_in(node, "nft", &["-f", "-"], Some(removal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_only_what_the_node_sends_and_drop_forwarded_probe_sources() {
        let pods: BTreeSet<Ipv4Addr> = ["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()]
            .into_iter()
            .collect();
        let r = ruleset(&pods);
        for want in [
            "meta l4proto tcp fib saddr type local ip daddr @pod_ips snat to 169.254.7.127",
            "add element ip ztunnel-host pod_ips { 10.0.0.2, 10.0.0.3 }",
            "type filter hook forward priority filter - 10; policy accept;\n    ip saddr 169.254.7.127 drop",
            "ether type ip ip saddr 169.254.7.127 drop",
        ] {
            assert!(r.contains(want), "missing {want:?}:\n{r}");
        }
        assert!(!ruleset(&BTreeSet::new()).contains("add element"));
    }
}
