//! `paxoskv`: command-line client of the paxoskv replicated key-value store.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    restore_default_sigpipe();
    let args = cli::Args::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(cli::EXIT_ERROR);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", paxoskv_service::error_chain_text(e.as_ref()));
            ExitCode::from(cli::EXIT_ERROR)
        }
    }
}

/// `paxoskv ... | head` closes stdout early. Rust ignores SIGPIPE, so every `println!` would
/// then panic; with the default action the process ends quietly, as Unix tools do. Sockets are
/// unaffected: Rust writes to them with MSG_NOSIGNAL.
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs to stderr, quiet unless `RUST_LOG` says otherwise (tarpc logs every expired deadline
/// as an error, which is routine for a client that retries).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
