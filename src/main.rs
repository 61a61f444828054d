//! The `nsgroup` command: `run` the daemon, show the `tree`, `check` the
//! invariant, and the rest of the subcommands ([`cli`], one module each).

mod cli;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = cli::Cli::command().subcommand(cli::assets::command()).get_matches();
    let (result, failure) = match matches.subcommand() {
        Some(("generate-assets", m)) => {
            let out = m.get_one::<PathBuf>("out").expect("--out is required");
            (cli::assets::generate(out).map(|()| ExitCode::SUCCESS), 1)
        }
        _ => {
            let args = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
            // check's 1 means "does not hold": its failures to run exit 2.
            let failure = if matches!(args.command, cli::Command::Check(_)) { 2 } else { 1 };
            (cli::dispatch(args), failure)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) if e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "nsgroup: {}", describe(&e));
            ExitCode::from(failure)
        }
    }
}

/// An error's message followed by those of its causes that the message does
/// not contain already (many embed their cause), each once.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use nsgroup::sys::error::IoError;

    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = io::Error::from(io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(IoError::new("read", "/x", io)).context("loading");
        assert_eq!(describe(&e), format!("loading: read /x: {text}"));
        assert_eq!(describe(&anyhow::anyhow!("a").context("b")), "b: a");
    }
}
