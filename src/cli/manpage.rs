//! `shiptoken man`: one page, shiptoken(1), that is the whole manual. clap_mangen's own page
//! points at a page per subcommand (`shiptoken-serve(1)`, ...) that nothing installs, and
//! has no EXIT STATUS; here its title, synopsis, description and options are kept, and every
//! command is described on this page, with the exit codes scripts rely on (CONTRACT.md).

use std::io::Write;

use clap::CommandFactory;

use super::Cli;

/// The exit codes, as the crate documentation of `cli` and the README give them.
const EXIT_STATUS: [(&str, &str); 5] = [
    ("0", "Success."),
    ("1", "Failure; the message is on standard error."),
    ("2", "Usage error: the command line is wrong."),
    (
        "3",
        "The account exists but has no usable token (pending, suspended, revoked or expired), or `accounts add` registered credentials the provider refused.",
    ),
    ("4", "The daemon is not reachable on its socket."),
];

/// Writes shiptoken(1) in roff.
pub(super) fn render(out: &mut dyn Write) -> std::io::Result<()> {
    let mut page = Vec::new();
    sections(&mut page)?;
    // Each of clap_mangen's sections starts with the same two-line preamble; once is enough.
    let page = String::from_utf8_lossy(&page);
    let mut seen = std::collections::HashSet::new();
    for line in page.lines() {
        if (line.starts_with(".ie ") || line.starts_with(".el ")) && !seen.insert(line) {
            continue;
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn sections(out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    commands(out, &cmd, "shiptoken")?;
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (code, meaning) in EXIT_STATUS {
        writeln!(out, ".TP\n{code}\n{}", text(meaning))?;
    }
    man.render_version_section(out)
}

/// Every visible subcommand of `cmd`, depth first, each with its usage and description.
fn commands(out: &mut dyn Write, cmd: &clap::Command, path: &str) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{path} {}", sub.get_name());
        if sub.has_subcommands() {
            commands(out, sub, &name)?;
            continue;
        }
        let usage = sub
            .clone()
            .bin_name(&name)
            .render_usage()
            .to_string()
            .trim_start_matches("Usage: ")
            .to_string();
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(ToString::to_string)
            .unwrap_or_default();
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", text(&usage), text(&about))?;
    }
    Ok(())
}

/// `s` as roff text: backslashes escaped, and no line read as a request.
fn text(s: &str) -> String {
    s.replace('\\', "\\e")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
// Panicking on a failed expectation is what a test is for.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn one_page_describes_every_command_and_the_exit_status() {
        let mut page = Vec::new();
        render(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains("\n.TH shiptoken 1 "), "{page}");
        assert_eq!(page.matches(".ie ").count(), 1, "{page}");
        assert!(!page.contains("shiptoken-serve(1)"), "{page}");
        assert!(!page.contains("shiptoken\\-serve(1)"), "{page}");
        assert!(page.contains(".SH \"EXIT STATUS\"\n.TP\n0\n"), "{page}");
        assert!(
            page.contains(".TP\n4\nThe daemon is not reachable"),
            "{page}"
        );
        for command in [
            "shiptoken serve",
            "shiptoken accounts show",
            "shiptoken accounts add shiphero",
            "shiptoken key generate",
            "shiptoken status",
            "shiptoken registry migrate",
        ] {
            assert!(
                page.contains(&format!("\\fB{command}")),
                "{command} missing:\n{page}"
            );
        }
    }
}
