use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};
use waypoint::admin::LogControl;
use waypoint::Settings;

/// `/logging`: the filter behind a reload handle.
struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl for Filter {
    fn current(&self) -> String {
        self.current.lock().expect("log lock").clone()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        *self.current.lock().expect("log lock") = filter.to_owned();
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let meshcore::settings::Parsed { settings, warnings } = meshcore::settings::parse::<Settings>();
    if settings.check_config {
        return meshcore::settings::check_config_report("waypoint", settings.validate(), &warnings);
    }
    let filter = match EnvFilter::try_new(&settings.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("waypoint: invalid log level {:?}: {e}", settings.log_level);
            return std::process::ExitCode::from(2);
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .init();
    warnings.iter().for_each(|w| tracing::warn!("{w}"));
    meshcore::rlimit::raise_nofile_and_log("waypoint");
    let log: Arc<dyn LogControl> = Arc::new(Filter {
        handle,
        current: Mutex::new(settings.log_level.clone()),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let waypoint = match waypoint::start(settings, Some(log)).await {
            Ok(w) => w,
            Err(e) => {
                eprintln!("waypoint: {e}");
                return std::process::ExitCode::from(1);
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
            _ = waypoint.quit_requested() => tracing::info!("/quitquitquit: draining"),
        }
        waypoint.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}
