//! The reliability suite: the brief's promises under load and faults, with figures. Each case
//! starts its own mesh of real processes on loopback ([`harness`]), loads it, injects a fault
//! and checks that nothing was lost; the run ends with a table of what was measured (the one
//! docs/reliability.md records).
//!
//! `conformance reliability` runs the bounded profile CI runs (about two minutes);
//! `conformance reliability --long` the full figures (10,000 tunnels, 2,000 × 1 MiB,
//! a 60 s outage, 5 minutes of 1-minute certificates; about fifteen minutes).
//! `RELIABILITY_CASES=outage,drain` runs only the cases whose names contain those words.

pub mod control;
pub mod harness;
pub mod hostile;
pub mod identities;
pub mod lifecycle;
pub mod load;
pub mod scale;
pub mod traces;

use std::path::PathBuf;
use std::time::Duration;

use crate::Case;
use harness::{Mesh, Options};

/// How hard each case pushes.
#[derive(Clone, Copy)]
pub struct Profile {
    pub long: bool,
    pub held: usize,
    pub transfers: usize,
    pub outage: Duration,
    pub secret_ttl: &'static str,
    pub ttl: Duration,
    pub rotation_run: Duration,
    pub drain_tunnels: usize,
    /// Hostile input: silent half-open connections per port, and CONNECT streams on the one
    /// flooding HBONE connection (100 are allowed).
    pub hostile_half_open: usize,
    pub hostile_streams: usize,
}

impl Profile {
    pub const CI: Self = Self {
        long: false,
        held: 2_000,
        transfers: 300,
        outage: Duration::from_secs(10),
        secret_ttl: "6s",
        ttl: Duration::from_secs(6),
        rotation_run: Duration::from_secs(20),
        drain_tunnels: 100,
        hostile_half_open: 500,
        hostile_streams: 150,
    };
    pub const LONG: Self = Self {
        long: true,
        held: 10_000,
        transfers: 2_000,
        outage: Duration::from_secs(60),
        secret_ttl: "60s",
        ttl: Duration::from_secs(60),
        rotation_run: Duration::from_secs(300),
        drain_tunnels: 500,
        hostile_half_open: 2_000,
        hostile_streams: 400,
    };
}

/// One row of the figures table.
pub struct Row {
    pub case: &'static str,
    pub load: String,
    pub faults: String,
    pub result: String,
}

pub struct Suite {
    pub rt: tokio::runtime::Runtime,
    pub bin_dir: PathBuf,
    pub root: PathBuf,
    pub profile: Profile,
    pub rows: Vec<Row>,
    relay: Option<control::Relay>,
}

impl Suite {
    fn dir(&self, case: &str) -> PathBuf {
        self.root.join(case)
    }

    /// Starts a fresh mesh for `case` and runs `body` on it.
    fn with_mesh<T>(
        &mut self,
        case: &str,
        opts: Options,
        body: impl AsyncFnOnce(&mut Mesh, &Suite) -> Result<T, String>,
    ) -> Result<T, String> {
        let dir = self.dir(case);
        let this = &*self;
        this.rt.block_on(async {
            let mut mesh = Mesh::start(&dir, &this.bin_dir, opts).await?;
            body(&mut mesh, this).await
        })
    }

    fn row(&mut self, case: &'static str, load: String, faults: &str, result: String) {
        println!("      {result}");
        self.rows.push(Row {
            case,
            load,
            faults: faults.to_owned(),
            result,
        });
    }
}

fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "no byte lost: tunnels held open at once",
            run: |s| {
                let n = s.profile.held;
                let r = s.with_mesh("held", Options::default(), async |m, _| {
                    scale::hold(m, n).await
                })?;
                s.row(
                    "tunnels held open",
                    format!("{n} concurrent tunnels"),
                    "—",
                    r,
                );
                Ok(())
            },
        },
        Case {
            name: "no byte lost: concurrent transfers with half-closes, checked",
            run: |s| {
                let n = s.profile.transfers;
                let r = s.with_mesh("transfers", Options::default(), async |_, _| {
                    scale::transfers(n, 1 << 20, 0x5eed).await
                })?;
                s.row(
                    "bytes checked both ways",
                    format!("{n} concurrent tunnels, 0–1 MiB each, half-closes by either side"),
                    "—",
                    r,
                );
                Ok(())
            },
        },
        Case {
            name: "control plane killed under load",
            run: |s| {
                let outage = s.profile.outage;
                let r = s.with_mesh("outage", Options::default(), async |m, _| {
                    control::outage(m, outage).await
                })?;
                s.row(
                    "control-plane outage",
                    "a new tunnel every 20 ms, 10 long-lived tunnels".into(),
                    &format!(
                        "istiod-lite SIGKILLed for {} s; a DENY written meanwhile",
                        outage.as_secs()
                    ),
                    r,
                );
                Ok(())
            },
        },
        Case {
            name: "silent network partition to the control plane",
            run: |s| {
                if s.relay.is_none() {
                    s.relay = Some(s.rt.block_on(control::Relay::start())?);
                }
                let opts = Options {
                    via_relay: true,
                    ..Options::default()
                };
                let r = s.with_mesh("partition", opts, async |m, s| {
                    control::partition(m, s.relay.as_ref().expect("relay")).await
                })?;
                s.row(
                    "silent partition",
                    "a new tunnel every 100 ms".into(),
                    "every byte to istiod-lite held back (nothing closed or reset), then let through",
                    r,
                );
                Ok(())
            },
        },
        Case {
            name: "certificate rotation under load",
            run: |s| {
                let p = s.profile;
                let opts = Options {
                    secret_ttl: Some(p.secret_ttl),
                    ..Options::default()
                };
                let r = s.with_mesh("rotation", opts, async |m, _| {
                    lifecycle::rotation(m, p.ttl, p.rotation_run).await
                })?;
                s.row(
                    "certificate rotation",
                    "a new tunnel every 20 ms, 20 long-lived tunnels".into(),
                    &format!("{} certificates, renewed at half-life", p.secret_ttl),
                    r,
                );
                Ok(())
            },
        },
        Case {
            name: "drain: SIGTERM to the client's ztunnel under load",
            run: |s| drain_case(s, lifecycle::Side::Client, "drain-client"),
        },
        Case {
            name: "drain: SIGTERM to the server's ztunnel under load",
            run: |s| drain_case(s, lifecycle::Side::Server, "drain-server"),
        },
        Case {
            name: "hostile input on every port under load",
            run: |s| {
                let flood = hostile::Flood {
                    half_open: s.profile.hostile_half_open,
                    streams: s.profile.hostile_streams,
                    // Past the 10 s handshake deadlines of 15008, 15012 and 15080, with
                    // room for a busy ztunnel's accept.
                    hold: Duration::from_secs(12),
                };
                let r = s.with_mesh("hostile", Options::default(), async |m, _| {
                    hostile::hostile(m, flood).await
                })?;
                s.row(
                    "hostile input",
                    "a new tunnel every 20 ms, 10 long-lived tunnels".into(),
                    &format!(
                        "garbage, plain HTTP, slow ClientHello, {} half-open on each port of both \
                         ztunnels and istiod-lite; {} CONNECTs on one HBONE connection; \
                         xDS streams with an unknown token",
                        flood.half_open, flood.streams
                    ),
                    r,
                );
                Ok(())
            },
        },
        Case {
            name: "tracing: a connection is one trace across both ztunnels, over OTLP",
            run: |s| {
                let (collector, grpc, http) = s.rt.block_on(traces::receiver())?;
                let opts = Options {
                    otlp: Some((grpc, http)),
                    ..Options::default()
                };
                let r = s.with_mesh("traces", opts, async |m, _| {
                    traces::one_connection_one_trace(m, &collector).await
                })?;
                s.row("tracing", "one connection, sampling 1".into(), "—", r);
                Ok(())
            },
        },
        Case {
            name: "refused identities: refused, counted, logged",
            run: |s| {
                let r = s.with_mesh("identities", Options::default(), async |m, _| {
                    identities::refused_identities(m).await
                })?;
                s.row(
                    "refused identities",
                    "one attempt each".into(),
                    "certificates minted for each wrong identity on 15008; wrong node and \
                     unknown token on the CA",
                    r,
                );
                Ok(())
            },
        },
    ]
}

fn drain_case(s: &mut Suite, side: lifecycle::Side, dir: &'static str) -> Result<(), String> {
    let n = s.profile.drain_tunnels;
    let opts = Options {
        drain_timeout: Some("5s"),
        ..Options::default()
    };
    let r = s.with_mesh(dir, opts, async |m, _| {
        lifecycle::drain(m, side, n, Duration::from_secs(3)).await
    })?;
    let who = match side {
        lifecycle::Side::Client => "the client's ztunnel",
        lifecycle::Side::Server => "the server's ztunnel",
    };
    s.row(
        "drain",
        format!("{n} tunnels streaming for 3 s"),
        &format!("SIGTERM to {who} 1 s in; DRAIN_TIMEOUT 5 s"),
        r,
    );
    Ok(())
}

/// Runs the suite with `profile` and prints the figures as a Markdown table.
pub fn run(bin_dir: PathBuf, profile: Profile) -> Result<crate::Outcome, String> {
    println!(
        "reliability ({}): real istiod-lite and ztunnels on 127.90.0.0/24",
        if profile.long {
            "long"
        } else {
            "CI profile; --long for the full figures"
        }
    );
    // Both ztunnels and this process hold a descriptor or more per tunnel.
    // Each process holds about one descriptor per tunnel: raise the soft limit to the hard one
    // (raising the hard one needs CAP_SYS_RESOURCE, which this machine's root lacks).
    let want = (profile.held as u64 * 2).max(65_536);
    if harness::raise_nofile(want).is_err() {
        let hard = harness::hard_nofile();
        let _ = harness::raise_nofile(hard);
        if hard < profile.held as u64 + 1_000 {
            println!(
                "      open-file hard limit {hard}: too low for {} held tunnels",
                profile.held
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let root = std::env::temp_dir().join(format!("mesh-reliability-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let apps = rt.block_on(harness::spawn_apps(&bin_dir, root.join("apps.log")))?;
    let mut suite = Suite {
        rt,
        bin_dir,
        root: root.clone(),
        profile,
        rows: Vec::new(),
        relay: None,
    };
    // RELIABILITY_CASES=word[,word]: only the cases whose name contains one of the words.
    let only = std::env::var("RELIABILITY_CASES").unwrap_or_default();
    let words: Vec<&str> = only.split(',').filter(|w| !w.is_empty()).collect();
    let selected: Vec<_> = cases()
        .into_iter()
        .filter(|c| words.is_empty() || words.iter().any(|w| c.name.contains(w)))
        .collect();
    let outcome = crate::run_cases(&mut suite, &selected);
    drop(apps);
    println!("\n| test | load | faults | result |\n| --- | --- | --- | --- |");
    for r in &suite.rows {
        println!("| {} | {} | {} | {} |", r.case, r.load, r.faults, r.result);
    }
    if outcome.failed.is_empty() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        println!("(logs kept in {})", root.display());
    }
    Ok(outcome)
}
