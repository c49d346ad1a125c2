//! `raft-cli`: administer and use a raft-kv cluster.
//!
//! # Layout
//!
//! - [`args`]: the command line (clap).
//! - [`settings`]: endpoints and certificate files from flags, environment
//!   variables and a config file, in that order of precedence.
//! - [`commands`]: one function per command, over raft-kv's client library;
//!   turning client errors into advice.
//! - [`bench`](mod@bench): the load generator and its report.
//! - [`output`]: tables and JSON.
//!
//! Exit codes: 0 success; 1 a negative answer (`get` of a missing key, a
//! `cas` that did not swap); 2 an error (the message says what failed and
//! what to do).

mod args;
mod bench;
mod commands;
mod output;
mod settings;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, as the server uses: `bench` runs a thousand clients in one
/// process, where glibc's malloc took about a tenth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for errors (clap uses it for usage errors too).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raft-cli: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        let settings = settings::resolve(&cli.global, &|name| std::env::var(name).ok())?;
        let context = commands::Context {
            settings,
            output: cli.global.output,
        };
        commands::run(&context, cli.command).await
    });
    // Do not wait for connections' background tasks to wind down.
    runtime.shutdown_background();
    match result {
        Ok(outcome) => outcome.into(),
        Err(e) => {
            eprintln!("raft-cli: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
