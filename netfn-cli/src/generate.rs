//! `netfn generate completions|man --out DIR`: shell completions and man pages made from the
//! real command-line definition. Hidden from `--help`; `cargo xtask install` and `cargo xtask
//! deb` run it with the binary they install, so pages and completions always match it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgMatches, Command, FromArgMatches, Subcommand};
use clap_complete::Shell;

/// The hidden verb's name.
pub const NAME: &str = "generate";

#[derive(Subcommand)]
enum Generate {
    /// Write netfn.bash, _netfn (zsh) and netfn.fish into DIR.
    Completions {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write netfn.1 and one page per subcommand (netfn-up.1, …) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// The hidden `generate` subcommand, to add to the public command line.
pub fn command() -> Command {
    Generate::augment_subcommands(
        Command::new(NAME)
            .about("Write shell completions or man pages (for packaging)")
            .hide(true)
            .subcommand_required(true),
    )
}

/// Runs `netfn generate …`; `cli` is the public command line (without this verb).
pub fn run(args: &ArgMatches, cli: Command) -> Result<ExitCode> {
    match Generate::from_arg_matches(args).unwrap_or_else(|e| e.exit()) {
        Generate::Completions { out } => completions(cli, &out)?,
        Generate::Man { out } => man_pages(cli, &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn create_dir(out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create {}; pass a writable directory to --out",
            out.display()
        )
    })
}

fn completions(mut cli: Command, out: &Path) -> Result<()> {
    create_dir(out)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path =
            clap_complete::generate_to(shell, &mut cli, "netfn", out).with_context(|| {
                format!(
                    "cannot write the {shell} completions into {}",
                    out.display()
                )
            })?;
        println!("{}", path.display());
    }
    Ok(())
}

fn man_pages(cli: Command, out: &Path) -> Result<()> {
    create_dir(out)?;
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    // Every page's footer names the version (clap_mangen puts the subcommand's name there).
    let source = format!("netfn {}", cli.get_version().unwrap_or_default());
    write_pages(&cli, out, &source)
}

/// Writes the page of `cmd` and of each visible subcommand (recursively).
fn write_pages(cmd: &Command, out: &Path, source: &str) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(source)
        .manual("netfn manual");
    let path = out.join(man.get_filename());
    let mut page = Vec::new();
    render(&man, cmd, &mut page)
        .with_context(|| format!("cannot render the man page of {}", cmd.get_name()))?;
    fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", path.display());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, out, source)?;
    }
    Ok(())
}

/// clap_mangen's sections, with the `after_help` examples as an EXAMPLES section in no-fill
/// mode (clap_mangen's own extra section would run the example lines together).
fn render(man: &clap_mangen::Man, cmd: &Command, w: &mut dyn Write) -> std::io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    if let Some(help) = cmd.get_after_help() {
        let text = help.to_string();
        let examples = text.strip_prefix("Examples:").unwrap_or(&text);
        writeln!(w, ".SH EXAMPLES")?;
        writeln!(w, ".nf")?;
        for line in examples.lines().filter(|l| !l.trim().is_empty()) {
            writeln!(w, "{}", roff_line(line.trim_start()))?;
        }
        writeln!(w, ".fi")?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// One line of literal text for roff: backslashes and dashes escaped, and a leading `.` or `'`
/// (a request) protected.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::roff_line;

    #[test]
    fn roff_lines_are_literal() {
        assert_eq!(roff_line("netfn up --all"), "netfn up \\-\\-all");
        assert_eq!(roff_line(".hidden"), "\\&.hidden");
        assert_eq!(roff_line("a\\b"), "a\\eb");
    }
}
