//! The `idmux` binary: all logic lives in the library; see `idmux::cli`.

fn main() -> std::process::ExitCode {
    idmux::cli::main()
}
