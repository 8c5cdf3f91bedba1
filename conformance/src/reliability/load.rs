//! Steady load while a fault is injected: a new tunnel every `interval` (each opened, pinged and
//! closed on its own task), and a set of long-lived tunnels pinged in turn. Counts what failed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::harness::{open, ping, ECHO_PORT};

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub new_ok: u64,
    pub new_failed: u64,
    pub pings_ok: u64,
    pub pings_failed: u64,
    /// The first few failures, for the report.
    pub first_failures: Vec<String>,
}

impl Counts {
    fn fail(&mut self, what: String) {
        if self.first_failures.len() < 3 {
            self.first_failures.push(what);
        }
    }

    pub fn failed(&self) -> u64 {
        self.new_failed + self.pings_failed
    }
}

pub struct Load {
    counts: Arc<Mutex<Counts>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Load {
    /// Starts the load: a new tunnel every `interval`, and `long_lived` tunnels pinged every
    /// `interval` each, in turn.
    pub async fn start(interval: Duration, long_lived: usize) -> Result<Self, String> {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        {
            let counts = counts.clone();
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                let mut each = JoinSet::new();
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    let counts = counts.clone();
                    each.spawn(async move {
                        let result = match open(ECHO_PORT).await {
                            Ok(mut t) => ping(&mut t, b"new").await,
                            Err(e) => Err(e.to_string()),
                        };
                        let mut c = counts.lock().expect("counts");
                        match result {
                            Ok(()) => c.new_ok += 1,
                            Err(e) => {
                                c.new_failed += 1;
                                c.fail(format!("new tunnel: {e}"));
                            }
                        }
                    });
                    while each.try_join_next().is_some() {}
                }
                while each.join_next().await.is_some() {}
            });
        }
        for n in 0..long_lived {
            let mut t = open(ECHO_PORT)
                .await
                .map_err(|e| format!("long-lived tunnel {n}: {e}"))?;
            let counts = counts.clone();
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(interval * long_lived.max(1) as u32);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.changed() => break,
                    }
                    let result = ping(&mut t, b"long").await;
                    let mut c = counts.lock().expect("counts");
                    match result {
                        Ok(()) => c.pings_ok += 1,
                        Err(e) => {
                            c.pings_failed += 1;
                            c.fail(format!("long-lived tunnel {n}: {e}"));
                            break;
                        }
                    }
                }
            });
        }
        Ok(Self {
            counts,
            stop,
            tasks,
        })
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.counts.lock().expect("counts").clone()
    }

    /// Stops the load, waits for what is in flight, and returns the counts.
    pub async fn stop(mut self) -> Counts {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.counts()
    }
}
