//! `outbox`: run the relay as its own process, and inspect or repair the outbox.

mod backends;
mod cli;
mod commands;
mod dashboard;
mod health;
mod settings;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = match settings::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let common = file.common(&cli);
    // Settings are checked before anything connects; a bad one is a usage error.
    let relay = match &cli.command {
        Command::Relay(args) => match file.relay(args, &common) {
            Ok(s) if args.check => return print_config(&s.to_file(&common)),
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    init_tracing(common.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, relay, common)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `outbox relay --check`: the effective settings, as a config file.
fn print_config(config: &settings::FileConfig) -> ExitCode {
    match toml::to_string(config) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot print the settings: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, relay: Option<settings::RelaySettings>, common: settings::Common) -> anyhow::Result<()> {
    match &cli.command {
        Command::Migrate => commands::migrate::run(&common).await,
        Command::Relay(_) => match relay {
            Some(settings) => commands::relay::run(&common, settings).await,
            None => unreachable!("relay settings are built before the runtime starts"),
        },
        Command::Status(args) => commands::status::run(&*backends::store(&common).await?, args).await,
        Command::Dead(cmd) => commands::dead::run(&*backends::store(&common).await?, cmd).await,
        Command::PurgePublished(args) => commands::purge::run(&*backends::store(&common).await?, args).await,
        Command::Dashboard(args) => commands::dashboard::run(&common, args).await,
    }
}
