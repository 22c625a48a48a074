use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match modelwatch::cli::main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // anyhow's own report: the error and its causes.
            eprintln!("Error: {e:?}");
            ExitCode::from(modelwatch::cli::exit_code(&e))
        }
    }
}
