//! A worker process started by a test: killed when dropped, so a failing test leaves no worker
//! behind (its cache drainer and SLA publisher would otherwise go on serving other tests' data).

use std::process::Child;

/// The worker process; `.0` for signals and waiting.
pub struct WorkerProcess(pub Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
