fn main() -> std::process::ExitCode {
    vpp_reconciler::cli::main()
}
