//! End-to-end suites against the local cluster (`meshctl`): real network namespaces, the real
//! ztunnel, node agent, CNI plugin and istiod-lite, and traffic made from inside the pods.
//! Each case prints one line; the run ends with `N passed, N failed`.

pub mod capture;
pub mod cilium;
pub mod ingress;
pub mod inspect;
pub mod l4;
pub mod l7;
pub mod observe;
pub mod reliability;
pub mod samples;
pub mod support;

use std::time::Instant;

/// One case: a name and the check.
pub struct Case<C> {
    pub name: &'static str,
    pub run: fn(&mut C) -> Result<(), String>,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: usize,
    pub failed: Vec<(String, String)>,
}

/// Runs the cases in order, printing a line each and the summary.
pub fn run_cases<C>(ctx: &mut C, cases: &[Case<C>]) -> Outcome {
    run_cases_with(ctx, cases, |_| {})
}

/// Like [`run_cases`], with `after` run after each case (cleanup), pass or fail.
pub fn run_cases_with<C>(ctx: &mut C, cases: &[Case<C>], mut after: impl FnMut(&mut C)) -> Outcome {
    let mut outcome = Outcome::default();
    for case in cases {
        let start = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(ctx)))
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()))
            });
        after(ctx);
        let took = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                println!("PASS  {:<62} {took:>5.1}s", case.name);
                outcome.passed += 1;
            }
            Err(e) => {
                println!("FAIL  {:<62} {took:>5.1}s\n      {e}", case.name);
                outcome.failed.push((case.name.to_owned(), e));
            }
        }
    }
    println!("{} passed, {} failed", outcome.passed, outcome.failed.len());
    outcome
}
