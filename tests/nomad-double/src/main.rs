//! `nomad-double`: the Nomad HTTP double of tend's tests (this crate's library, faithful to
//! reference/nomad-http-api.md) as a program, so `scripts/example` can run the local tenants
//! example without a Nomad cluster. Prints its address on the first line of stdout, serves
//! until SIGTERM or SIGINT. Not a Nomad: nothing is scheduled or run.

fn main() {
    let double = tend_nomad_double::NomadDouble::start();
    println!("{}", double.address());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nomad-double: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    eprintln!(
        "nomad-double: {} jobs registered, {} evaluations",
        double.count("PUT", "/v1/jobs"),
        double.evaluations()
    );
}
