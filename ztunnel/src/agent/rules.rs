//! The redirect rules the node agent installs inside an enrolled pod's network namespace
//! (nftables), so the pod's TCP goes through its ztunnel listeners:
//!
//! - outbound IPv4 TCP that ztunnel did not send (no mark 0x539), not to loopback → 15001;
//! - inbound IPv4 TCP arriving on the pod's interfaces, to any port but 15008 (HBONE) → 15006,
//!   except kubelet probes: source 169.254.7.127, Istio's probe address, which the node's own
//!   connections to enrolled pods are SNATed to and which the node drops on anything it
//!   forwards ([`super::host`]);
//! - IPv6 is not redirected: ztunnel's in-pod listeners are IPv4 only, and redirecting IPv6 to
//!   them would blackhole it. A dual-stack pod's IPv6 TCP is therefore not captured (as with
//!   Istio's in-pod rules when IPv6 is not enabled);
//! - the pod's DNS (UDP and TCP 53) to any address → 15053, ztunnel's DNS proxy, when DNS
//!   capture is asked for ([`RuleOptions::dns_capture`]);
//! - connections ztunnel opens inside the pod (mark 0x539) get conntrack mark 0x111; the other
//!   end's packets of those connections carry mark 0x111, and `ip rule fwmark 0x111/0xfff lookup
//!   100` with a local route in table 100 keeps them local. (This is what lets ztunnel connect
//!   to the application with the original client's address later, with IP_TRANSPARENT; today it
//!   connects from the pod's own address and the rule changes nothing.)
//!
//! Only a connection's first packet (a bare SYN) is redirected. A connection established before
//! the pod was enrolled may first meet conntrack after the rules arrive (conntrack starts in a
//! namespace with its first NAT rule) and is then picked up mid-stream: redirecting its next
//! packet to a ztunnel port would reset it.
//!
//! Installing is idempotent: one `nft -f` run flushes the table's rules and adds them again,
//! atomically. Un-enrolment only empties the two redirect chains: new connections are no
//! longer redirected, while connections redirected while the pod was enrolled keep everything
//! they depend on (measured in the conformance suite's opt-out case, which failed otherwise):
//! the nat chains' hooks that translate their packets, and the 0x111 connmark rules with the
//! `ip rule` and table 100 that route their packets to ztunnel's sockets. Those leftovers act
//! on nothing else: only connections ztunnel handled carry the marks.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::inpod::netns::Netns;

pub const TABLE: &str = "ztunnel-inpod";
/// ztunnel's own sockets.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// Connections ztunnel accepted; their replies use routing table 100.
pub const CONN_MARK: u32 = 0x111;
pub const ROUTE_TABLE: u32 = 100;
/// Istio's kubelet probe source address.
pub const PROBE_SOURCE: &str = "169.254.7.127";

/// What varies between installations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Redirect DNS to 15053.
    pub dns_capture: bool,
}

/// The script that empties the redirect chains, keeping them and the mark rules (un-enrolment).
pub fn passthrough_ruleset() -> String {
    format!("table inet {TABLE}\nflush chain inet {TABLE} prerouting\nflush chain inet {TABLE} output\n")
}

/// The nftables script: creates the table and chains if missing, and replaces their rules
/// (one atomic run).
pub fn ruleset(options: RuleOptions) -> String {
    script(options, true)
}

/// The rule set without its redirects: the chains, and the mark rules for reply routing.
pub fn routing_ruleset() -> String {
    script(RuleOptions::default(), false)
}

fn script(options: RuleOptions, redirects: bool) -> String {
    // The pod's own lookups, to any resolver (also one on loopback), before the loopback
    // exception; never DNS the pod serves (no prerouting rule).
    let dns = if redirects && options.dns_capture {
        "meta nfproto ipv4 udp dport 53 redirect to :15053
    meta nfproto ipv4 tcp dport 53 tcp flags & (fin | syn | rst | ack) == syn redirect to :15053
    "
    } else {
        ""
    };
    let (inbound, outbound) = if redirects {
        (
            "meta nfproto ipv4 tcp flags & (fin | syn | rst | ack) == syn redirect to :15006",
            "meta nfproto ipv4 tcp flags & (fin | syn | rst | ack) == syn redirect to :15001",
        )
    } else {
        ("", "")
    };
    format!(
        "table inet {TABLE}
flush table inet {TABLE}
table inet {TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"lo\" return
    ip saddr {PROBE_SOURCE} return
    meta l4proto tcp tcp dport 15008 return
    {inbound}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark & 0xfff == {ZTUNNEL_MARK:#x} return
    {dns}ip daddr 127.0.0.0/8 return
    ip6 daddr ::1 return
    {outbound}
  }}
  chain mangle_output {{
    type route hook output priority mangle; policy accept;
    meta mark & 0xfff == {ZTUNNEL_MARK:#x} ct mark set ct mark & 0xfffff000 | {CONN_MARK:#x}
    meta mark & 0xfff != {ZTUNNEL_MARK:#x} ct mark & 0xfff == {CONN_MARK:#x} meta mark set meta mark & 0xfffff000 | {CONN_MARK:#x}
  }}
}}
"
    )
}

/// Runs `program args` inside a namespace (forked from a thread that entered it).
/// Where `program` is: on PATH, else in the system directories `nft` and `ip` live in, so an
/// agent started with a bare environment (no PATH, as some init systems and tests start it)
/// still finds them.
fn locate(program: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| program.into())
}

pub(crate) fn run_in(
    netns: &Netns,
    program: &'static str,
    args: &[&str],
    stdin: Option<String>,
) -> Result<(), String> {
    let what = format!("{program} {}", args.join(" "));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    netns
        .run(move || {
            let mut child = Command::new(locate(program))
                .args(&args)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(text.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            Ok(if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            })
        })
        .map_err(|e| format!("{what}: {e}"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// `ip rule add|del fwmark 0x111/0xfff lookup 100`.
fn ip_rule(netns: &Netns, action: &str) -> Result<(), String> {
    let mark = format!("{CONN_MARK:#x}/0xfff");
    let table = ROUTE_TABLE.to_string();
    run_in(
        netns,
        "ip",
        &["rule", action, "fwmark", &mark, "lookup", &table],
        None,
    )
}

/// Installs the reply routing without redirects (before ztunnel gets the pod): the mark
/// rules, `ip rule fwmark 0x111/0xfff lookup 100` and table 100's local route.
pub fn prepare(netns: &Netns) -> Result<(), String> {
    if installed(netns) {
        return Ok(()); // already captured: keep the redirects (and their connections)
    }
    run_in(netns, "nft", &["-f", "-"], Some(routing_ruleset()))?;
    route(netns)
}

/// Installs (or refreshes) the rules, redirects included, in a pod's namespace.
pub fn install(netns: &Netns, options: RuleOptions) -> Result<(), String> {
    run_in(netns, "nft", &["-f", "-"], Some(ruleset(options)))?;
    route(netns)
}

/// Policy routing for replies of accepted connections; `replace`, and del before add, keep it
/// idempotent.
fn route(netns: &Netns) -> Result<(), String> {
    let table = ROUTE_TABLE.to_string();
    run_in(
        netns,
        "ip",
        &[
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ],
        None,
    )?;
    let _ = ip_rule(netns, "del");
    ip_rule(netns, "add")
}

/// Removes the redirects (un-enrolment). Connections established while enrolled keep their
/// translation and routing, and carry on.
pub fn remove(netns: &Netns) -> Result<(), String> {
    if installed(netns) {
        run_in(netns, "nft", &["-f", "-"], Some(passthrough_ruleset()))
    } else {
        Ok(()) // not installed: nothing to remove
    }
}

/// Whether the redirects are installed in a pod's namespace.
pub fn installed(netns: &Netns) -> bool {
    let script = format!("list table inet {TABLE}\n");
    let listing = netns.run(move || {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    });
    listing.is_ok_and(|l| l.contains("redirect to :15001"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_redirects_as_istio_in_pod_does() {
        let r = ruleset(RuleOptions { dns_capture: true });
        for want in [
            "flush table inet ztunnel-inpod",
            "tcp dport 15008 return",
            "meta nfproto ipv4 tcp flags & (fin | syn | rst | ack) == syn redirect to :15006",
            "meta mark & 0xfff == 0x539 return",
            "meta nfproto ipv4 tcp flags & (fin | syn | rst | ack) == syn redirect to :15001",
            "meta nfproto ipv4 udp dport 53 redirect to :15053",
            "ip saddr 169.254.7.127 return",
            "ct mark set ct mark & 0xfffff000 | 0x111",
        ] {
            assert!(r.contains(want), "missing {want:?}:\n{r}");
        }
        let plain = ruleset(RuleOptions::default());
        assert!(
            !plain.contains("15053"),
            "no DNS capture unless asked:\n{plain}"
        );
    }
}
