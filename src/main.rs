//! The `idmux` binary: the only crate that knows clap. Commands live in [`cmd`]; the work is
//! in the library crates (`idmux-client`, `idmux-devcluster`, ...).

mod cmd;

fn main() -> std::process::ExitCode {
    cmd::main()
}
