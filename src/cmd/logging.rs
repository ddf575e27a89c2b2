//! Logging: one tracing subscriber on stderr, as text (default) or JSON lines.
//!
//! Levels: daemons (`start`, `cluster start`) log at info, one-shot commands at warn;
//! `--debug` lowers idmux's own modules to debug; `IDMUX_LOG` (tracing's env-filter syntax,
//! e.g. `debug` or `idmux=trace,russh=debug`) overrides both. Nothing idmux logs carries key
//! material or tokens: messages name files and identities, never their contents.

use clap::ValueEnum;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines: time, level, message, fields.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, ...), for log shippers.
    Json,
}

/// The filter for a default level and the `--debug` switch (before `IDMUX_LOG` is applied).
pub(crate) fn default_filter(default: &str, debug: bool) -> String {
    // Libraries stay at their own level under --debug: russh and hyper at debug are noisy and
    // say nothing about idmux's decisions.
    if debug {
        format!("{default},idmux=debug,idmux_fdpass=debug,russh=warn")
    } else {
        format!("{default},russh=warn")
    }
}

/// Colour codes only on a terminal, and never with `NO_COLOR` set (no-color.org): files,
/// pipes and the journal get plain text.
pub(crate) fn colour(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

/// Install the global subscriber. A second call is a no-op.
pub(crate) fn init(format: LogFormat, debug: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(default, debug)));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        ))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().with_current_span(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_lowers_only_idmux() {
        let f = default_filter("info", true);
        assert!(f.starts_with("info,"), "{f}");
        assert!(f.contains("idmux=debug"), "{f}");
        assert!(f.contains("russh=warn"), "{f}");
        assert!(!default_filter("warn", false).contains("debug"));
        // Both must be valid env-filter directives.
        for d in [true, false] {
            tracing_subscriber::EnvFilter::try_new(default_filter("warn", d)).unwrap();
        }
    }
}
