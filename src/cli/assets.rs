//! The hidden `generate-assets --out DIR` (for packaging): the man pages and
//! shell completions, generated from [`Cli`](super::Cli).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use nsgroup::sys::error::IoError;

use super::Cli;

/// The subcommand, kept out of [`Cli`] so that the man pages and
/// completions it writes leave it out.
pub fn command() -> clap::Command {
    clap::Command::new("generate-assets")
        .hide(true)
        .about("Write the man pages (DIR/man) and shell completions (DIR/completions) of nsgroup")
        .arg(clap::Arg::new("out").long("out").value_name("DIR").required(true).value_parser(clap::value_parser!(PathBuf)))
}

/// Writes nsgroup(8) and nsgroup-<subcommand>(8) to `out`/man, and the bash,
/// zsh and fish completions to `out`/completions.
pub fn generate(out: &Path) -> anyhow::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man).map_err(|e| IoError::new("create", &man, e))?;
    let source = format!("nsgroup {}", env!("CARGO_PKG_VERSION"));
    // `help` is no page of its own: the pages are the help.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let pages = std::iter::once(cli.clone()).chain(cli.get_subcommands().cloned());
    for page in pages {
        let name = page.get_display_name().unwrap_or_else(|| page.get_name()).to_string();
        let path = man.join(format!("{name}.8"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page).title(name.to_uppercase()).section("8").source(&source).render(&mut text)?;
        std::fs::write(&path, text).map_err(|e| IoError::new("write", &path, e))?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions).map_err(|e| IoError::new("create", &completions, e))?;
    let mut cli = Cli::command();
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "nsgroup", &completions)
            .with_context(|| format!("writing the {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}
