//! The `faccia` binary: parses the command line and hands over to the library.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = faccia::cli::Cli::parse();
    // delta-rs's kernel logs every snapshot it builds at INFO (several lines per table, per
    // query); its warnings and errors stay.
    let default_level = match cli.command {
        faccia::cli::Command::Serve { .. } => "info,buoyant_kernel=warn,deltalake_core=warn",
        _ => "warn",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("faccia: starting the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(faccia::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("faccia: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
