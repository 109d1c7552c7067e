fn main() -> std::process::ExitCode {
    cmqhook::cli::main()
}
