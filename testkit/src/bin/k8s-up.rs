//! Starts the test control plane (`baton_testkit::k8s`) and keeps it until interrupted:
//! a cluster to look at while writing or debugging a Kubernetes test.
//!
//! ```sh
//! cargo run -p baton-testkit --bin k8s-up
//! ```
//! It prints the kubeconfig (contexts `admin`, `baton-deploy`, `baton-test`) and the
//! directory of the components' logs; everything stops and is removed on Ctrl-C.

fn main() {
    let cp = baton_testkit::k8s::shared();
    println!(
        "Kubernetes {} at {} (started in {:.1} s)\nkubeconfig: {}\nlogs: {}\nCtrl-C stops it.",
        cp.version,
        cp.url,
        cp.started_in.as_secs_f64(),
        cp.kubeconfig.display(),
        cp.dir.display()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = ctrlc_channel(tx);
    let _ = rx.recv();
}

/// Waits for SIGINT or SIGTERM on a thread of its own; then the process exits normally
/// (the exit handler stops the components and removes their directory).
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        let _ = tx.send(());
    });
    Ok(())
}
