//! The Apple API simulator in the benchmark's process, on its own runtime (2 worker threads)
//! so its work does not queue behind the benchmark's tasks.

use vpp_reconciler::sim::{self, SimOptions};

/// Starts the simulator on its own runtime; returns its address.
pub fn start_sim(seed: u64) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("simulator runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the simulator");
            tx.send(listener.local_addr().expect("simulator address"))
                .expect("report the simulator address");
            // Runs until the process exits.
            let _ = sim::serve(listener, SimOptions { seed }, std::future::pending()).await;
        });
    });
    (rx.recv().expect("simulator address"), handle)
}
